"""The outbox dispatcher: sends confirmed messages by SMTP, marks them SENT, never drops one.

It polls PENDING rows (and wakes at once when Confirm rings the doorbell), sends the round's messages
over one SMTP session with the stdlib smtplib in a worker thread, and marks those sent SENT in one
UPDATE. A failure is recorded on the row (attempts, last_error)
and the row is retried with exponential backoff; a round stops at the first failure, and rounds back
off while the SMTP server stays unreachable. Delivery is at least once: the Message-ID is derived from
the reservation id, so a duplicate (a crash between sending and marking) is recognisable.
"""

from __future__ import annotations

import asyncio
import functools
import smtplib
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.clock import Clock
from services.kit.db import db_retry
from services.kit.errors import TransientError
from services.kit.settings import env, env_float, env_int
from services.notify.models import outbox

log = structlog.get_logger("tripmesh.notify.outbox")


@dataclass(frozen=True, slots=True)
class SendResult:
    """How many of a round's e-mails went out, in order, and why the next one did not (if one did not)."""

    sent: int
    error: Exception | None


Sender = Callable[[Sequence[Message]], Awaitable[SendResult]]


@dataclass(frozen=True)
class OutboxSettings:
    interval_seconds: float = 0.2
    max_backoff_seconds: float = 60.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_timeout_seconds: float = 10.0
    sender: str = "tripmesh <bookings@tripmesh.local>"
    batch_size: int = 50

    @classmethod
    def from_env(cls) -> OutboxSettings:
        return cls(
            interval_seconds=env_float("notify", "outbox_interval_seconds", cls.interval_seconds),
            max_backoff_seconds=env_float("notify", "outbox_max_backoff_seconds", cls.max_backoff_seconds),
            smtp_host=env("notify", "smtp_host", cls.smtp_host),
            smtp_port=env_int("notify", "smtp_port", cls.smtp_port),
            smtp_timeout_seconds=env_float("notify", "smtp_timeout_seconds", cls.smtp_timeout_seconds),
            sender=env("notify", "sender", cls.sender),
            batch_size=env_int("notify", "outbox_batch_size", cls.batch_size),
        )


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    reservation_id: str
    recipient: str
    subject: str
    body: str


# --- pure: the e-mail and the backoff ----------------------------------------------------------------


def message_id(reservation_id: str, sender: str) -> str:
    """A Message-ID that names the reservation, so a resent duplicate is recognisable."""
    local = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else f"%{ord(c):02X}" for c in reservation_id)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "tripmesh.local"
    return f"<{local}@{domain}>"


_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP  # readable in the .eml files, unlike base64


def build_email(message: OutboxMessage, *, sender: str, clock: Clock) -> Message:
    """The e-mail of a message: text/plain in UTF-8, headers encoded where they are not ASCII.

    Built with the email package's legacy (compat32) classes on purpose: the default policy parses
    every header through its registry, and building each mail that way was a quarter of the
    notification service's CPU under load (py-spy); this is a fifth of the cost, the same message.
    """
    email = Message()
    email.set_payload(message.body, _UTF8_QP)  # text/plain; charset="utf-8", quoted-printable
    email["From"] = _address(sender)
    email["To"] = _address(message.recipient)
    email["Subject"] = message.subject if message.subject.isascii() else Header(message.subject, "utf-8").encode()
    email["Date"] = format_datetime(clock.now())
    email["Message-ID"] = message_id(message.reservation_id, sender)
    email["X-Tripmesh-Reservation-Id"] = message.reservation_id
    return email


def _address(value: str) -> str:
    """An address header's value, its display name RFC 2047-encoded when it is not ASCII."""
    return value if value.isascii() else formataddr(parseaddr(value), "utf-8")


def backoff_seconds(attempts: int, *, interval: float, maximum: float) -> float:
    """Exponential backoff after `attempts` failures: interval * 2**attempts, at most `maximum`."""
    return float(min(maximum, interval * 2 ** min(attempts, 30)))


def smtp_sender(host: str, port: int, timeout: float) -> Sender:
    """Send a round's e-mails over one SMTP session (one connect, EHLO and QUIT per round, not per mail)."""

    def send_blocking(emails: Sequence[Message]) -> SendResult:
        sent = 0
        try:
            with smtplib.SMTP(host, port, timeout=timeout) as smtp:
                for email in emails:
                    smtp.send_message(email)
                    sent += 1
        except (OSError, ValueError) as error:  # smtplib.SMTPException is an OSError
            return SendResult(sent, error)
        return SendResult(sent, None)

    async def send(emails: Sequence[Message]) -> SendResult:
        return await asyncio.to_thread(send_blocking, emails)

    return send


# --- the dispatcher ----------------------------------------------------------------------------------

_doorbells: weakref.WeakKeyDictionary[Engine, asyncio.Event] = weakref.WeakKeyDictionary()


def doorbell_for(engine: AsyncEngine) -> asyncio.Event:
    """The event Confirm sets so the dispatcher of the same database wakes without waiting a poll."""
    return _doorbells.setdefault(engine.sync_engine, asyncio.Event())


class OutboxDispatcher:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        settings: OutboxSettings,
        doorbell: asyncio.Event,
        send: Sender | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.doorbell = doorbell
        self.send = send or smtp_sender(settings.smtp_host, settings.smtp_port, settings.smtp_timeout_seconds)
        self._not_before: dict[str, float] = {}  # reservation_id -> loop time of its next attempt

    async def run_forever(self) -> None:
        log.info("outbox_dispatcher_started", smtp_host=self.settings.smtp_host, smtp_port=self.settings.smtp_port)
        try:
            await self._loop()
        except Exception:
            log.exception("outbox_dispatcher_crashed")
            raise

    async def _loop(self) -> None:
        failed_rounds = 0
        while True:
            try:
                ok, busy = await self.dispatch_once()
            except (TransientError, DBAPIError) as error:
                log.warning("outbox_read_failed", error=str(error))
                ok, busy = False, False
            failed_rounds = 0 if ok else failed_rounds + 1
            if busy and ok:
                continue
            delay = self._backoff(failed_rounds) if failed_rounds else self.settings.interval_seconds
            await self._wait(delay)

    async def dispatch_once(self) -> tuple[bool, bool]:
        """Send what is due; returns (no send failed, a full batch was sent so more may be waiting)."""
        due = await self._due()
        if not due:
            return True, False
        result = await self.send([build_email(m, sender=self.settings.sender, clock=self.clock) for m in due])
        if result.sent:
            await db_retry(functools.partial(self._mark_sent, due[: result.sent]))
        if result.error is not None:
            await self._record_failure(due[result.sent], result.error)
            return False, False
        return True, len(due) == self.settings.batch_size

    async def _due(self) -> list[OutboxMessage]:
        now = asyncio.get_running_loop().time()
        self._not_before = {rid: at for rid, at in self._not_before.items() if at > now}
        waiting = list(self._not_before)
        c = outbox.c
        query = (
            select(c.reservation_id, c.recipient, c.subject, c.body)
            .where(c.state == "PENDING", c.reservation_id.not_in(waiting))
            .order_by(c.created_at, c.reservation_id)
            .limit(self.settings.batch_size)
        )

        async def read() -> list[OutboxMessage]:
            async with self.engine.connect() as conn:
                return [OutboxMessage(*row) for row in await conn.execute(query)]

        return await db_retry(read)

    async def _mark_sent(self, messages: Sequence[OutboxMessage]) -> None:
        c = outbox.c
        ids = [m.reservation_id for m in messages]
        async with self.engine.begin() as conn:
            # DISCARDED too: a Cancel that came while the message was on the wire could not recall it.
            await conn.execute(
                update(outbox)
                .where(c.reservation_id.in_(ids), c.state.in_(("PENDING", "DISCARDED")))
                .values(state="SENT", sent_at=self.clock.now(), attempts=c.attempts + 1, last_error=None)
            )
        for reservation_id in ids:
            self._not_before.pop(reservation_id, None)
        log.info("mail_sent", count=len(ids), reservation_ids=ids)

    async def _record_failure(self, message: OutboxMessage, error: Exception) -> None:
        c = outbox.c
        text = f"{type(error).__name__}: {error}"[:1000]

        async def work() -> int:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(outbox)
                    .where(c.reservation_id == message.reservation_id)
                    .values(attempts=c.attempts + 1, last_error=text)
                    .returning(c.attempts)
                )
                return int(result.scalar_one_or_none() or 0)

        attempts = await db_retry(work)
        delay = self._backoff(attempts)
        self._not_before[message.reservation_id] = asyncio.get_running_loop().time() + delay
        log.warning(
            "mail_send_failed", reservation_id=message.reservation_id, attempt=attempts, retry_in=delay, error=text
        )

    def _backoff(self, attempts: int) -> float:
        return backoff_seconds(
            attempts, interval=self.settings.interval_seconds, maximum=self.settings.max_backoff_seconds
        )

    async def _wait(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self.doorbell.wait(), timeout=delay)
        except TimeoutError:
            return
        self.doorbell.clear()


def background(engine: AsyncEngine, clock: Clock) -> list[Coroutine[Any, Any, None]]:
    """The SPEC's background jobs: one outbox dispatcher, configured from the environment."""
    return [OutboxDispatcher(engine, clock, OutboxSettings.from_env(), doorbell_for(engine)).run_forever()]
