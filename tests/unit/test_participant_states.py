"""The pure participant state machine (services/participant/states.py): every status x call, and expiry edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.participant.states import Decision, Record, Status, on_cancel, on_confirm, on_reserve

pytestmark = pytest.mark.unit

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
FP = "fingerprint-a"
OTHER_FP = "fingerprint-b"


def record(status: Status, *, expire_in: float | None = 60.0, fp: str = FP, tombstone: bool = False) -> Record:
    expire_at = None if expire_in is None else NOW + timedelta(seconds=expire_in)
    return Record(
        reservation_id="trip-1/flight",
        status=status,
        fingerprint=fp,
        details={"seats": 1},
        price_minor=12_950,
        currency="EUR",
        expire_at=expire_at,
        created_at=NOW - timedelta(seconds=10),
        updated_at=NOW - timedelta(seconds=10),
        tombstone=tombstone,
    )


LIVE_HELD = record(Status.HELD, expire_in=60)
DUE_HELD = record(Status.HELD, expire_in=-1)  # past its expiry, not yet swept
CONFIRMED = record(Status.CONFIRMED)
CANCELLED = record(Status.CANCELLED)
TOMBSTONE = record(Status.CANCELLED, expire_in=None, fp="", tombstone=True)
EXPIRED = record(Status.EXPIRED, expire_in=-1)

STATES: dict[str, Record | None] = {
    "none": None,
    "held": LIVE_HELD,
    "held-due": DUE_HELD,
    "confirmed": CONFIRMED,
    "cancelled": CANCELLED,
    "tombstone": TOMBSTONE,
    "expired": EXPIRED,
}

# The whole table: for each stored state, what Reserve (same details), Reserve (other details),
# Confirm and Cancel decide.
TABLE: dict[str, tuple[Decision, Decision, Decision, Decision]] = {
    #             reserve same             reserve other             confirm                    cancel
    "none": (Decision.HOLD, Decision.HOLD, Decision.REFUSE_NOT_FOUND, Decision.TOMBSTONE),
    "held": (Decision.RETURN, Decision.REFUSE_CONFLICT, Decision.CONFIRM, Decision.RELEASE),
    "held-due": (Decision.EXPIRE, Decision.REFUSE_CONFLICT, Decision.EXPIRE, Decision.EXPIRE),
    "confirmed": (Decision.RETURN, Decision.REFUSE_CONFLICT, Decision.RETURN, Decision.RELEASE),
    "cancelled": (Decision.REFUSE_CANCELLED, Decision.REFUSE_CANCELLED, Decision.REFUSE_CANCELLED, Decision.RETURN),
    "tombstone": (Decision.REFUSE_CANCELLED, Decision.REFUSE_CANCELLED, Decision.REFUSE_CANCELLED, Decision.RETURN),
    "expired": (Decision.REFUSE_EXPIRED, Decision.REFUSE_CONFLICT, Decision.REFUSE_EXPIRED, Decision.RETURN),
}


def test_table_covers_every_status() -> None:
    covered = {r.status for r in STATES.values() if r is not None}
    assert covered == set(Status)
    assert STATES.keys() == TABLE.keys()


@pytest.mark.parametrize("state", TABLE)
def test_reserve_same_details(state: str) -> None:
    assert on_reserve(STATES[state], FP, NOW) is TABLE[state][0]


@pytest.mark.parametrize("state", TABLE)
def test_reserve_other_details(state: str) -> None:
    assert on_reserve(STATES[state], OTHER_FP, NOW) is TABLE[state][1]


@pytest.mark.parametrize("state", TABLE)
def test_confirm(state: str) -> None:
    assert on_confirm(STATES[state], NOW) is TABLE[state][2]


@pytest.mark.parametrize("state", TABLE)
def test_cancel(state: str) -> None:
    assert on_cancel(STATES[state], NOW) is TABLE[state][3]


@pytest.mark.parametrize(
    ("offset", "expired"),
    [(-1e-6, False), (0.0, True), (1e-6, True), (3600.0, True)],
    ids=["just-before", "exactly-at", "just-after", "long-after"],
)
def test_expiry_boundary(offset: float, expired: bool) -> None:
    """A hold whose expire_at equals now is expired: the boundary instant belongs to expiry."""
    held = record(Status.HELD, expire_in=0)
    now = NOW + timedelta(seconds=offset)
    assert held.is_expired(now) is expired
    assert on_confirm(held, now) is (Decision.EXPIRE if expired else Decision.CONFIRM)
    assert on_reserve(held, FP, now) is (Decision.EXPIRE if expired else Decision.RETURN)
    assert on_cancel(held, now) is (Decision.EXPIRE if expired else Decision.RELEASE)


@pytest.mark.parametrize("status", [Status.CONFIRMED, Status.CANCELLED, Status.EXPIRED])
def test_only_a_hold_expires(status: Status) -> None:
    past_due = record(status, expire_in=-3600)
    assert past_due.is_expired(NOW) is False


def test_hold_without_expiry_never_expires() -> None:
    assert record(Status.HELD, expire_in=None).is_expired(NOW + timedelta(days=365)) is False


def test_confirmed_past_its_old_expiry_is_still_confirmable_again() -> None:
    """A confirmed reservation keeps its expire_at, but expiry no longer applies: a repeat Confirm is OK."""
    confirmed_long_ago = record(Status.CONFIRMED, expire_in=-3600)
    assert on_confirm(confirmed_long_ago, NOW) is Decision.RETURN
    assert on_cancel(confirmed_long_ago, NOW) is Decision.RELEASE
