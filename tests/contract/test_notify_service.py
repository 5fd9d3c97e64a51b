"""NotificationService with its outbox dispatcher and a real SMTP sink, all in-process on free ports.

A confirmed message must arrive as an .eml file; a cancelled one never; one confirmed while the SMTP
server is down stays PENDING (with its failed attempts recorded) and arrives once the server is up.
Waits poll with a bounded deadline; nothing is asserted after a bare sleep.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from services.notify.models import outbox
from services.notify.servicer import SPEC
from services.notify.smtp_sink import RunningSink, start_sink
from services.participant.runner import RunningParticipant, start_participant
from tests.support.cases.notify import check_conservation, message
from tests.support.databases import Databases
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import notification_service_pb2 as notify_pb
from tripmesh.v1 import notification_service_pb2_grpc as notify_grpc

pytestmark = [pytest.mark.contract, pytest.mark.postgresql]

DEADLINE_SECONDS = 10.0


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll `check` until it returns something truthy, or fail after DEADLINE_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Notify:
    running: RunningParticipant
    stub: notify_grpc.NotificationServiceAsyncStub
    mail_dir: Path

    def mails(self) -> list[EmailMessage]:
        return [
            message_from_bytes(path.read_bytes(), policy=default_policy)  # type: ignore[misc]
            for path in sorted(self.mail_dir.glob("*.eml"))
        ]

    async def mail_for(self, reservation_id: str) -> EmailMessage:
        async def found() -> EmailMessage | None:
            matching = [m for m in self.mails() if m["X-Tripmesh-Reservation-Id"] == reservation_id]
            return matching[0] if matching else None

        mail: EmailMessage = await eventually(found, f"the mail of {reservation_id}")
        return mail

    async def outbox_row(self, reservation_id: str) -> Any:
        async with self.running.engine.connect() as conn:
            return (await conn.execute(select(outbox).where(outbox.c.reservation_id == reservation_id))).first()

    async def delivery_state(self, reservation_id: str) -> int:
        request = notify_pb.NotificationServiceGetReservationRequest(reservation_id=reservation_id)
        return int((await self.stub.GetReservation(request)).delivery_state)


def reserved_port() -> socket.socket:
    """A socket bound to a free port but not listening: connecting to it is refused until it is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def outbox_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def point_at(port: int) -> None:
        monkeypatch.setenv("TRIPMESH_NOTIFY_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("TRIPMESH_NOTIFY_SMTP_PORT", str(port))
        monkeypatch.setenv("TRIPMESH_NOTIFY_OUTBOX_INTERVAL_SECONDS", "0.05")
        monkeypatch.setenv("TRIPMESH_NOTIFY_OUTBOX_MAX_BACKOFF_SECONDS", "0.2")

    return point_at


@pytest.fixture
async def start_notify(tmp_path: Path, databases: Databases) -> AsyncIterator[Callable[[], Awaitable[Notify]]]:
    started: list[tuple[RunningParticipant, grpc.aio.Channel]] = []

    async def start() -> Notify:
        running = await start_participant(SPEC, database_url=databases.url("notify"))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        started.append((running, channel))
        stub = notify_grpc.NotificationServiceStub(channel)
        return Notify(running, stub, tmp_path / "mail")  # type: ignore[arg-type]

    yield start
    for running, channel in started:
        await channel.close()
        await running.stop()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[RunningSink]:
    running = await start_sink(port=0, directory=tmp_path / "mail")
    yield running
    await running.stop()


async def test_a_confirmed_message_is_delivered_by_smtp(
    sink: RunningSink, outbox_env: Callable[[int], None], start_notify: Callable[[], Awaitable[Notify]]
) -> None:
    outbox_env(sink.port)
    notify = await start_notify()
    body = "Hello Ada,\n\nyour flight LIS 2027-03-01 and the hotel are confirmed.\n"
    await notify.stub.Reserve(message("trip-1/notify", subject="Your trip to Lisbon ✈", body=body))
    confirmed = await notify.stub.Confirm(notify_pb.NotificationServiceConfirmRequest(reservation_id="trip-1/notify"))
    assert confirmed.reservation.status == common_pb.RESERVATION_STATUS_CONFIRMED
    assert confirmed.delivery_state in (notify_pb.DELIVERY_STATE_PENDING, notify_pb.DELIVERY_STATE_SENT)

    mail = await notify.mail_for("trip-1/notify")
    assert mail["To"] == "ada@example.com"
    assert mail["Subject"] == "Your trip to Lisbon ✈"
    assert mail["From"] == "tripmesh <bookings@tripmesh.local>"
    assert mail["Message-ID"] == "<trip-1%2Fnotify@tripmesh.local>"
    assert mail.get_content().replace("\r\n", "\n") == body  # type: ignore[attr-defined]  # SMTP lines end in CRLF

    async def sent() -> bool:
        return await notify.delivery_state("trip-1/notify") == notify_pb.DELIVERY_STATE_SENT

    await eventually(sent, "delivery_state SENT")
    row = await notify.outbox_row("trip-1/notify")
    assert (row.state, row.attempts, row.last_error) == ("SENT", 1, None)
    assert row.sent_at is not None
    await notify.stub.Confirm(notify_pb.NotificationServiceConfirmRequest(reservation_id="trip-1/notify"))
    assert len(notify.mails()) == 1
    assert await check_conservation(notify.running.engine) == []


async def test_a_message_cancelled_before_confirm_is_never_sent(
    sink: RunningSink, outbox_env: Callable[[int], None], start_notify: Callable[[], Awaitable[Notify]]
) -> None:
    outbox_env(sink.port)
    notify = await start_notify()
    await notify.stub.Reserve(message("trip-1/notify", subject="Cancelled trip"))
    cancelled = await notify.stub.Cancel(notify_pb.NotificationServiceCancelRequest(reservation_id="trip-1/notify"))
    assert cancelled.reservation.status == common_pb.RESERVATION_STATUS_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await notify.stub.Confirm(notify_pb.NotificationServiceConfirmRequest(reservation_id="trip-1/notify"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A later message goes through the same outbox: once it has arrived, the cancelled one would have too.
    await notify.stub.Reserve(message("trip-2/notify", subject="Booked trip"))
    await notify.stub.Confirm(notify_pb.NotificationServiceConfirmRequest(reservation_id="trip-2/notify"))
    await notify.mail_for("trip-2/notify")
    assert [m["Subject"] for m in notify.mails()] == ["Booked trip"]
    assert await notify.outbox_row("trip-1/notify") is None
    assert await notify.delivery_state("trip-1/notify") == notify_pb.DELIVERY_STATE_DISCARDED
    assert await check_conservation(notify.running.engine) == []


async def test_with_smtp_down_a_message_waits_in_the_outbox_until_it_is_up(
    tmp_path: Path, outbox_env: Callable[[int], None], start_notify: Callable[[], Awaitable[Notify]]
) -> None:
    port_holder = reserved_port()
    port = port_holder.getsockname()[1]
    outbox_env(port)
    notify = await start_notify()
    await notify.stub.Reserve(message("trip-1/notify"))
    await notify.stub.Confirm(notify_pb.NotificationServiceConfirmRequest(reservation_id="trip-1/notify"))

    async def retried() -> bool:
        row = await notify.outbox_row("trip-1/notify")
        return bool(row.attempts >= 2)

    await eventually(retried, "two failed attempts")
    row = await notify.outbox_row("trip-1/notify")
    assert row.state == "PENDING"
    assert row.last_error
    assert await notify.delivery_state("trip-1/notify") == notify_pb.DELIVERY_STATE_PENDING

    port_holder.close()
    sink = await start_sink(port=port, directory=tmp_path / "mail")
    try:
        mail = await notify.mail_for("trip-1/notify")
        assert mail["To"] == "ada@example.com"
        row = await eventually(lambda: _sent_row(notify, "trip-1/notify"), "the row marked SENT")
        assert row.attempts >= 3
        assert len(notify.mails()) == 1
    finally:
        await sink.stop()


async def _sent_row(notify: Notify, reservation_id: str) -> Any:
    row = await notify.outbox_row(reservation_id)
    return row if row is not None and row.state == "SENT" else None


async def test_a_confirmed_message_cancelled_before_sending_is_discarded(
    outbox_env: Callable[[int], None], start_notify: Callable[[], Awaitable[Notify]]
) -> None:
    port_holder = reserved_port()
    outbox_env(port_holder.getsockname()[1])
    try:
        notify = await start_notify()
        await notify.stub.Reserve(message("trip-1/notify"))
        await notify.stub.Confirm(notify_pb.NotificationServiceConfirmRequest(reservation_id="trip-1/notify"))
        await notify.stub.Cancel(notify_pb.NotificationServiceCancelRequest(reservation_id="trip-1/notify"))
        row = await notify.outbox_row("trip-1/notify")
        assert row.state == "DISCARDED"
        assert await notify.delivery_state("trip-1/notify") == notify_pb.DELIVERY_STATE_DISCARDED
        assert await check_conservation(notify.running.engine) == []
    finally:
        port_holder.close()


async def test_a_staged_message_reports_pending_and_bad_input_writes_nothing(
    sink: RunningSink, outbox_env: Callable[[int], None], start_notify: Callable[[], Awaitable[Notify]]
) -> None:
    outbox_env(sink.port)
    notify = await start_notify()
    held = await notify.stub.Reserve(message("trip-1/notify"))
    assert held.reservation.status == common_pb.RESERVATION_STATUS_HELD
    assert held.reservation.price == common_pb.Money(currency_code="EUR", minor_units=0)
    assert await notify.delivery_state("trip-1/notify") == notify_pb.DELIVERY_STATE_PENDING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await notify.stub.Reserve(message("trip-2/notify", recipient="not-an-email"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "recipient" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await notify.delivery_state("trip-2/notify")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
