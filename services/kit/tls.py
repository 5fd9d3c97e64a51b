"""Mutual TLS by configuration: which certificate a process presents and which CA it trusts.

Off by default (plaintext, and every process says so at start-up). Two ways to switch it on:

- `TRIPMESH_TLS_DIR=var/certs` (what `tripmesh up --tls` sets): every process uses the files
  `tripmesh certs` writes there: `<component>.pem`, `<component>-key.pem` and `ca.pem`; command-line
  clients (the `tripmesh` CLI, the health check, the demo, the tests) use the `client` certificate.
- per process, `TRIPMESH_<C>_TLS_CERT`, `TRIPMESH_<C>_TLS_KEY` and `TRIPMESH_<C>_TLS_CA` (all three),
  where C is COORDINATOR, FLIGHT, HOTEL, PAYMENT, NOTIFY, or CLIENT for the command-line clients. These
  win over the directory, so each container can mount only its own key.

With TLS on, a server requires and verifies the caller's certificate against the CA (a caller without
one, or with one from another CA, fails the handshake before any handler runs), and clients verify the
server's certificate the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.kit.certs import CA_CERT, CLIENT, cert_path, key_path

TLS_DIR_VARIABLE = "TRIPMESH_TLS_DIR"


class TlsConfigError(Exception):
    """TLS is switched on but its files are missing or only partly configured."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def _read(self) -> tuple[bytes, bytes, bytes]:
        missing = [str(p) for p in (self.cert, self.key, self.ca) if not p.is_file()]
        if missing:
            raise TlsConfigError(f"TLS is on but {', '.join(missing)} missing: run `tripmesh certs` to create them")
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials:
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def tls_files(component: str, environ: Mapping[str, str] | None = None) -> TlsFiles | None:
    """The files `component` uses ('client' for command-line clients), or None when TLS is off."""
    environ = os.environ if environ is None else environ
    prefix = f"TRIPMESH_{component.upper().replace('-', '_')}_TLS_"
    explicit = {part: environ.get(prefix + part, "") for part in ("CERT", "KEY", "CA")}
    if any(explicit.values()):
        unset = [prefix + part for part, value in explicit.items() if not value]
        if unset:
            raise TlsConfigError(f"{', '.join(unset)} must be set too (TLS needs a certificate, its key and the CA)")
        return TlsFiles(Path(explicit["CERT"]), Path(explicit["KEY"]), Path(explicit["CA"]))
    directory = environ.get(TLS_DIR_VARIABLE, "")
    if not directory:
        return None
    root = Path(directory)
    return TlsFiles(cert_path(root, component), key_path(root, component), root / CA_CERT)


def client_tls(environ: Mapping[str, str] | None = None) -> TlsFiles | None:
    return tls_files(CLIENT, environ)


def aio_channel(
    address: str,
    tls: TlsFiles | None,
    options: Sequence[tuple[str, Any]] | None = None,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel: secure with `tls`' client certificate, else plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options, interceptors=interceptors)


def sync_channel(address: str, tls: TlsFiles | None, options: Sequence[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A blocking channel: secure with `tls`' client certificate, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=options)
