"""Rebuild an aio RPC method handler with its behaviour wrapped: the boilerplate every interceptor needs.

An aio server interceptor gets a handler back from `continuation` and must return one; to run code
around the call it rebuilds the handler with a wrapped behaviour and the same (de)serialisers. Only
the shapes tripmesh serves are wrapped: unary-unary and unary-stream (WatchTrip); others pass as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]


def rewrap(handler: Any, *, unary: Callable[[Behaviour], Behaviour], stream: Callable[[Behaviour], Behaviour]) -> Any:
    """`handler` with its unary-unary behaviour wrapped by `unary`, or its unary-stream one by `stream`."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def split_method(full_method: str) -> tuple[str, str]:
    """'/tripmesh.v1.FlightService/Reserve' -> ('tripmesh.v1.FlightService', 'Reserve')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method
