"""A local SMTP sink: accepts every message and writes it as an .eml file, for development and tests.

    python -m services.notify.smtp_sink      # 127.0.0.1:2525, files under $TRIPMESH_VAR_DIR/mail/

Settings: TRIPMESH_SMTP_SINK_HOST, TRIPMESH_SMTP_SINK_PORT, TRIPMESH_SMTP_SINK_DIR. Each message is
written atomically (a hidden temporary file renamed into place), named by its arrival time and a safe
form of its Message-ID, and logged as one line. Tests start it in-process with `start_sink(port=0)`.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP

from services.kit import logging as kit_logging
from services.kit.settings import env, env_int, var_dir

log = structlog.get_logger("tripmesh.smtp_sink")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SinkSettings:
    host: str
    port: int
    directory: Path

    @classmethod
    def from_env(cls) -> SinkSettings:
        directory = env("smtp_sink", "dir", "") or str(Path(var_dir()) / "mail")
        return cls(
            host=env("smtp_sink", "host", "127.0.0.1"),
            port=env_int("smtp_sink", "port", 2525),
            directory=Path(directory),
        )


def eml_name(message_id: str | None, at: datetime, nonce: str) -> str:
    """`<UTC time>-<safe Message-ID>-<nonce>.eml`: sorts by arrival and is safe on any filesystem."""
    safe = _UNSAFE.sub("_", (message_id or "").strip().strip("<>")).strip("._")[:100] or "no-message-id"
    return f"{at.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}-{safe}-{nonce}.eml"


def write_atomically(directory: Path, name: str, content: bytes) -> Path:
    final = directory / name
    temporary = directory / f".{name}.tmp"
    with open(temporary, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, final)
    return final


class MailDirHandler:
    """The aiosmtpd handler: every DATA becomes one file in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        # compat32: the headers as they are (the default policy's parsing of each cost most of a mail)
        headers = BytesHeaderParser(policy=compat32).parsebytes(content)
        message_id = headers.get("Message-ID")
        name = eml_name(str(message_id) if message_id else None, datetime.now(UTC), secrets.token_hex(4))
        path = await asyncio.to_thread(write_atomically, self.directory, name, content)
        log.info(
            "mail_received",
            message_id=str(message_id or ""),
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            subject=str(make_header(decode_header(str(headers.get("Subject", ""))))),
            size=len(content),
            path=str(path),
        )
        return "250 Message accepted for delivery"


@dataclass
class RunningSink:
    server: asyncio.Server
    directory: Path

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_sink(host: str = "127.0.0.1", port: int = 0, directory: Path | None = None) -> RunningSink:
    """Listen on the running loop (port 0 picks a free port); stop() closes the listener."""
    directory = directory or SinkSettings.from_env().directory
    directory.mkdir(parents=True, exist_ok=True)
    handler = MailDirHandler(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="tripmesh-smtp-sink", enable_SMTPUTF8=True), host=host, port=port
    )
    return RunningSink(server=server, directory=directory)


async def _serve(settings: SinkSettings) -> None:
    sink = await start_sink(settings.host, settings.port, settings.directory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("smtp_sink_listening", host=settings.host, port=sink.port, directory=str(settings.directory))
    await stop.wait()
    await sink.stop()
    log.info("smtp_sink_stopped")


def main() -> None:
    kit_logging.configure(
        "smtp-sink",
        fmt=os.environ.get("TRIPMESH_LOG_FORMAT", "console"),
        level=os.environ.get("TRIPMESH_LOG_LEVEL", "info"),
    )
    asyncio.run(_serve(SinkSettings.from_env()))


if __name__ == "__main__":
    main()
