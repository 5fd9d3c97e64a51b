"""The server interceptor every process installs: log context from metadata, typed errors to statuses.

- binds `trip_id` (from the `tripmesh-trip-id` metadata the coordinator sends) and the method name to
  structlog's contextvars, so every line logged while serving the call carries them;
- turns a raised TripmeshError into a rich status (code, message, ErrorInfo, BadRequest, RetryInfo);
- turns a database error that may pass (a lost connection, a locked SQLite file, a serialization
  failure past its retries) into UNAVAILABLE, which callers retry;
- turns any other exception into INTERNAL with a generic message; the traceback goes only to the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog

from services.kit.db import is_retriable
from services.kit.errors import TransientError, TripmeshError
from services.kit.status import to_grpc_status
from services.kit.wrapping import HandlerCache, rewrap

TRIP_ID_METADATA = "tripmesh-trip-id"

log = structlog.get_logger("tripmesh.rpc")


def _trip_id(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == TRIP_ID_METADATA:
            return str(value)
    return None


def _bind(rpc: str, context: grpc.aio.ServicerContext) -> Mapping[str, Any]:
    """Bind the call's log context (rpc, and trip_id when the caller sent one); the tokens undo it."""
    trip_id = _trip_id(context.invocation_metadata())
    if trip_id:
        return structlog.contextvars.bind_contextvars(rpc=rpc, trip_id=trip_id)
    return structlog.contextvars.bind_contextvars(rpc=rpc)


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, domain: str) -> None:
        self._domain = domain
        self._cache = HandlerCache()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        # Wrapped once per method: the call's own context (its trip id) is read when it runs.
        return self._cache.get(details.method, handler, lambda inner: self._wrap(inner, details.method))

    def _wrap(self, handler: Any, method: str) -> Any:
        rpc = method.rsplit("/", 1)[-1]
        return rewrap(
            handler,
            unary=lambda behaviour: self._wrap_unary(behaviour, rpc),
            stream=lambda behaviour: self._wrap_stream(behaviour, rpc),
        )

    def _wrap_unary(self, behaviour: Any, rpc: str) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            tokens = _bind(rpc, context)
            try:
                return await behaviour(request, context)
            except Exception as error:  # noqa: BLE001 - answered (see _answer_error)
                await self._answer_error(context, error)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)

        return wrapped

    def _wrap_stream(self, behaviour: Any, rpc: str) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            tokens = _bind(rpc, context)
            try:
                async for item in behaviour(request, context):
                    yield item
            except Exception as error:  # noqa: BLE001 - answered (see _answer_error)
                await self._answer_error(context, error)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)

        return wrapped

    async def _answer_error(self, context: grpc.aio.ServicerContext, error: Exception) -> None:
        """A handler's exception as the caller sees it: ours with its code and details, an abort the
        handler already answered as it is, anything else as _unexpected says (logged with its traceback)."""
        if isinstance(error, TripmeshError):
            await self._abort(context, error)
        elif isinstance(error, grpc.aio.AbortError):
            raise error
        else:
            await self._unexpected(context, error)

    async def _unexpected(self, context: grpc.aio.ServicerContext, error: Exception) -> None:
        """A database that cannot be reached right now is UNAVAILABLE (retry), not a bug; the rest is INTERNAL."""
        if is_retriable(error):
            log.warning("rpc_database_unavailable", error=str(error).splitlines()[0][:300])
            await self._abort(context, TransientError("the database is unavailable right now; nothing changed, retry"))
        log.exception("rpc_internal_error")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")

    async def _abort(self, context: grpc.aio.ServicerContext, error: TripmeshError) -> None:
        status = to_grpc_status(error, self._domain)
        log.info("rpc_refused", code=error.code.name, reason=error.reason, message=error.message)
        await context.abort(status.code, status.details, status.trailing_metadata)
