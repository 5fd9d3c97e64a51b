"""A local certificate authority for the mesh: one CA, one certificate per process, one for operators.

`tripmesh certs [--dir var/certs]` writes, with the `cryptography` library:

    ca.pem                      the CA certificate every process trusts (and nothing else)
    ca-key.pem                  the CA's private key (0600): keep it off the hosts, or delete it
    <name>.pem, <name>-key.pem  for coordinator, flight, hotel, payment, notify, car and client

Each leaf certificate names its identity twice: the subject CN (`coordinator`) and a SAN URI
(`spiffe://tripmesh/coordinator`); servers authorise callers by that identity (kit.authz). Its SANs
also cover where it is dialled: localhost, 127.0.0.1, ::1 and the docker compose service name, so one
set of files serves `tripmesh up` and `docker compose up`. Every leaf may act as server and as client
(the coordinator is both; `client` is the operators' certificate for grpcurl, the CLI and health checks).

Keys are ECDSA P-256: small, and cheap to handshake with.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IDENTITY_PREFIX = "spiffe://tripmesh/"
COORDINATOR = "coordinator"
CLIENT = "client"
SERVICES = ("coordinator", "flight", "hotel", "payment", "notify", "car")
ALL_NAMES = (*SERVICES, CLIENT)
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
LEAF_DAYS = 397
CA_DAYS = 3650


def identity_uri(name: str) -> str:
    return f"{IDENTITY_PREFIX}{name}"


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}-key.pem"


@dataclass(frozen=True)
class Issued:
    directory: Path
    created: list[str]  # the files written now
    kept: list[str]  # the files that already existed and were left alone


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, private = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private, serialization.NoEncryption())


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(common_name: str) -> x509.Name:
    organisation = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tripmesh")
    return x509.Name([organisation, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "tripmesh local CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, hosts: Iterable[str] = ()
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `name` (CN and spiffe://tripmesh/<name>), valid for localhost and `hosts`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(name))]
    for host in dict.fromkeys(["localhost", name, *hosts]):
        sans.append(x509.DNSName(host))
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue(directory: Path, *, names: Iterable[str] = ALL_NAMES, force: bool = False) -> Issued:
    """Create the CA (unless present) and a certificate for each name (unless present) in `directory`.

    Existing files are kept unless `force`, so running it twice changes nothing; a missing CA key with a
    leaf to issue is an error (the new leaf would not chain to the CA the others trust)."""
    directory.mkdir(parents=True, exist_ok=True)
    created: list[str] = []
    kept: list[str] = []
    ca_file, ca_key_file = directory / CA_CERT, directory / CA_KEY
    if force or not ca_file.exists():
        ca_cert, ca_key = make_ca()
        _write(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
        _write(ca_key_file, _key_pem(ca_key), secret=True)
        created += [CA_CERT, CA_KEY]
        force = True  # every leaf must chain to the new CA
    else:
        kept.append(CA_CERT)
        ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        ca_key = None
    for name in names:
        leaf, leaf_key = cert_path(directory, name), key_path(directory, name)
        if not force and leaf.exists() and leaf_key.exists():
            kept.append(leaf.name)
            continue
        if ca_key is None:
            if not ca_key_file.exists():
                raise FileNotFoundError(f"{ca_key_file} is missing: cannot issue {name}'s certificate (use --force)")
            loaded = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{ca_key_file} is not an EC private key")
            ca_key = loaded
        cert, key = make_leaf(name, ca_cert, ca_key)
        _write(leaf, cert.public_bytes(serialization.Encoding.PEM), secret=False)
        _write(leaf_key, _key_pem(key), secret=True)
        created += [leaf.name, leaf_key.name]
    return Issued(directory, created, kept)
