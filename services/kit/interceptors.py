"""The server interceptor every process installs: log context from metadata, typed errors to statuses.

- binds `trip_id` (from the `tripmesh-trip-id` metadata the coordinator sends) and the method name to
  structlog's contextvars, so every line logged while serving the call carries them;
- turns a raised TripmeshError into a rich status (code, message, ErrorInfo, BadRequest, RetryInfo);
- turns a database error that may pass (a lost connection, a locked SQLite file, a serialization
  failure past its retries) into UNAVAILABLE, which callers retry;
- turns any other exception into INTERNAL with a generic message; the traceback goes only to the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from services.kit.db import is_retriable
from services.kit.errors import TransientError, TripmeshError
from services.kit.status import to_grpc_status
from services.kit.wrapping import rewrap

TRIP_ID_METADATA = "tripmesh-trip-id"

log = structlog.get_logger("tripmesh.rpc")


def _trip_id(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == TRIP_ID_METADATA:
            return str(value)
    return None


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, domain: str) -> None:
        self._domain = domain

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        context_vars = {"rpc": details.method.rsplit("/", 1)[-1]}
        trip_id = _trip_id(details.invocation_metadata)
        if trip_id:
            context_vars["trip_id"] = trip_id
        return rewrap(
            handler,
            unary=lambda behaviour: self._wrap_unary(behaviour, context_vars),
            stream=lambda behaviour: self._wrap_stream(behaviour, context_vars),
        )

    def _wrap_unary(self, behaviour: Any, context_vars: dict[str, str]) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with structlog.contextvars.bound_contextvars(**context_vars):
                try:
                    return await behaviour(request, context)
                except TripmeshError as error:
                    await self._abort(context, error)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:  # noqa: BLE001 - answered, and logged with its traceback
                    await self._unexpected(context, error)

        return wrapped

    def _wrap_stream(self, behaviour: Any, context_vars: dict[str, str]) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with structlog.contextvars.bound_contextvars(**context_vars):
                try:
                    async for item in behaviour(request, context):
                        yield item
                except TripmeshError as error:
                    await self._abort(context, error)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:  # noqa: BLE001 - answered, and logged with its traceback
                    await self._unexpected(context, error)

        return wrapped

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
