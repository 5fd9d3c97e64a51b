"""Who may call what, read from the caller's certificate when TLS is on.

Every certificate `tripmesh certs` issues names one identity: `spiffe://tripmesh/<name>` (a SAN URI,
which gRPC reports as the peer's `peer_spiffe_id`), and its subject CN `<name>`. The rule:

- a participant's state-changing methods, Reserve, Confirm and Cancel, are the coordinator's alone:
  any other identity (an operator's `client` certificate, another service) gets PERMISSION_DENIED
  before the handler runs, so nothing is written;
- everything else (the coordinator's public API, the participants' reads: SearchFlights,
  SearchHotels, ListPaymentMethods, GetReservation; health and reflection) is open to any caller whose
  certificate the CA signed: the handshake already refused everyone else.

With TLS off there is no identity to check: plaintext is for the local demo only, and says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.kit.certs import COORDINATOR, identity_uri
from services.kit.errors import PermissionDeniedError
from services.kit.wrapping import HandlerCache, check_first

COORDINATOR_ONLY_METHODS = frozenset({"Reserve", "Confirm", "Cancel"})


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's identity: its SPIFFE id (SAN URI), else its certificate's CN; None without one."""
    auth = context.auth_context()
    for key in ("peer_spiffe_id", "x509_common_name"):
        values = auth.get(key) or []
        if values:
            return bytes(values[0]).decode("utf-8", "replace")
    return None


def allowed(identity: str | None, method: str, coordinator: str = identity_uri(COORDINATOR)) -> bool:
    """Whether `identity` may call `method` ('/package.Service/Method')."""
    name = method.rsplit("/", 1)[-1]
    if name not in COORDINATOR_ONLY_METHODS:
        return True
    return identity in (coordinator, COORDINATOR)


class CoordinatorOnly(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse Reserve/Confirm/Cancel from any identity but the coordinator's. Install it inside
    kit.interceptors.ServerInterceptor (it raises PermissionDeniedError) and only when TLS is on."""

    def __init__(self) -> None:
        self._cache = HandlerCache()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.rsplit("/", 1)[-1] not in COORDINATOR_ONLY_METHODS:
            return handler
        return self._cache.get(method, handler, lambda inner: _coordinator_only(inner, method))


def _coordinator_only(handler: Any, method: str) -> Any:

    def check(_request: Any, context: grpc.aio.ServicerContext) -> None:
        identity = peer_identity(context)
        if not allowed(identity, method):
            raise PermissionDeniedError(
                f"{method} may be called only by the coordinator ({identity_uri(COORDINATOR)}); "
                f"this caller's certificate is {identity or 'without an identity'}",
                metadata={"caller": identity or ""},
            )

    return check_first(handler, check)
