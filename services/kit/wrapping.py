"""Rebuild an aio RPC method handler with its behaviour wrapped: the boilerplate every interceptor needs.

An aio server interceptor gets a handler back from `continuation` and must return one; to run code
around the call it rebuilds the handler with a wrapped behaviour and the same (de)serialisers. Only
the shapes tripmesh serves are wrapped: unary-unary and unary-stream (WatchTrip); others pass as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]


def rewrap(
    handler: Any,
    *,
    unary: Callable[[Behaviour], Behaviour],
    stream: Callable[[Behaviour], Behaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """`handler` with its unary-unary behaviour wrapped by `unary`, or its unary-stream one by `stream`
    (and, if given, another request deserializer)."""
    if handler is None:
        return None
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def check_first(
    handler: Any,
    check: Callable[[Any, grpc.aio.ServicerContext], None],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """`handler` with `check(request, context)` run before its behaviour; a check raises to refuse."""

    def unary(behaviour: Behaviour) -> Behaviour:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            check(request, context)
            return await behaviour(request, context)

        return checked

    def stream(behaviour: Behaviour) -> Behaviour:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            check(request, context)
            async for item in behaviour(request, context):
                yield item

        return checked

    return rewrap(handler, unary=unary, stream=stream, request_deserializer=request_deserializer)


class HandlerCache:
    """Each method's wrapped handler, built on its first call and reused while the inner handler is the same.

    An interceptor whose wrapping depends only on the method and its handler (not on the call) asks
    this cache instead of rebuilding the handler, its closures and its namedtuple on every call. The
    inner handler is compared by identity: the server's handlers, and those of the cached interceptors
    inside, are the same objects from call to call, so the cache holds one entry per method served.
    """

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, build: Callable[[Any], Any]) -> Any:
        hit = self._by_method.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = build(handler)
        self._by_method[method] = (handler, wrapped)
        return wrapped


def split_method(full_method: str) -> tuple[str, str]:
    """'/tripmesh.v1.FlightService/Reserve' -> ('tripmesh.v1.FlightService', 'Reserve')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method
