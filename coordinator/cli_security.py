"""The `tripmesh` command's TLS parts: `tripmesh certs`, `tripmesh up --tls`, `--tls-dir` for clients.

Kept apart from cli.py so that it only hooks in: the subcommand, the `up` flag, and the banner lines
that say whether the mesh is plaintext or mutual TLS (and how grpcurl presents its certificate).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.kit.certs import ALL_NAMES, CA_CERT, CLIENT, cert_path, issue, key_path
from services.kit.tls import TLS_DIR_VARIABLE


def default_certs_dir() -> str:
    return os.environ.get(TLS_DIR_VARIABLE) or os.path.join(os.environ.get("TRIPMESH_VAR_DIR", "var"), "certs")


def cmd_certs(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    try:
        issued = issue(directory, force=args.force)
    except (OSError, ValueError) as error:
        print(f"tripmesh certs: {error}", file=sys.stderr)
        return 1
    print(f"certificates in {directory}/ (CA {CA_CERT}; one per process and '{CLIENT}' for operators)")
    if issued.created:
        print(f"  written: {', '.join(issued.created)}")
    if issued.kept:
        print(f"  kept:    {', '.join(issued.kept)} (already there; --force replaces everything)")
    print(f"run the mesh with TLS: {TLS_DIR_VARIABLE}={directory} tripmesh up   (or: tripmesh up --tls)")
    return 0


def add_certs_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser(
        "certs",
        help="create a local CA and a certificate for every process and for operators (mutual TLS)",
        description="Create a local CA, a certificate per service and the coordinator, and a 'client' "
        "certificate for operators (grpcurl, the CLI, health checks). Existing files are kept.",
    )
    certs.add_argument("--dir", default=default_certs_dir(), help="where (default $TRIPMESH_TLS_DIR or var/certs)")
    certs.add_argument("--force", action="store_true", help="replace the CA and every certificate")
    certs.set_defaults(handler=cmd_certs)


def add_up_tls_option(up: argparse.ArgumentParser) -> None:
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between every process (certificates in VAR_DIR/certs, created if missing)",
    )


def add_client_tls_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-dir",
        default=None,
        help=f"present the '{CLIENT}' certificate from this directory (default ${TLS_DIR_VARIABLE}; unset: plaintext)",
    )


def apply_client_tls(args: argparse.Namespace) -> None:
    """`--tls-dir` wins over the environment for this process (kit.tls reads TRIPMESH_TLS_DIR)."""
    tls_dir = getattr(args, "tls_dir", None)
    if tls_dir:
        os.environ[TLS_DIR_VARIABLE] = tls_dir


def prepare_up_tls(args: argparse.Namespace) -> str | None:
    """For `tripmesh up --tls`: make sure the certificates exist and switch TLS on for every child (and
    for this process's health probes). Returns the certificate directory, or None when TLS stays off."""
    if getattr(args, "tls", False):
        directory = os.environ.get(TLS_DIR_VARIABLE) or os.path.join(args.var_dir, "certs")
        issued = issue(Path(directory), names=ALL_NAMES)
        if issued.created:
            print(f"tripmesh: created certificates in {directory}/: {', '.join(issued.created)}", file=sys.stderr)
        os.environ[TLS_DIR_VARIABLE] = directory
    return os.environ.get(TLS_DIR_VARIABLE) or None


def transport_lines(tls_dir: str | None, grpcurl: str, coordinator: str) -> list[str]:
    """The banner's word on transport security, with a grpcurl line that works for it."""
    if tls_dir is None:
        return [
            "transport: PLAINTEXT (no TLS, no caller identities: for a local demo only; `tripmesh up --tls` for mTLS)",
            f"try: {grpcurl} -plaintext {coordinator} describe tripmesh.v1.TripCoordinator",
        ]
    root = Path(tls_dir)
    flags = f"-cacert {root / CA_CERT} -cert {cert_path(root, CLIENT)} -key {key_path(root, CLIENT)}"
    return [
        f"transport: mutual TLS (certificates in {tls_dir}/; only the coordinator may Reserve/Confirm/Cancel)",
        f"try: {grpcurl} {flags} {coordinator} describe tripmesh.v1.TripCoordinator",
        f"     tripmesh trips --tls-dir {tls_dir}",
    ]
