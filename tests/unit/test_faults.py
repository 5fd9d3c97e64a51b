"""services/kit/faults.py without a server: parsing TRIPMESH_<COMPONENT>_FAULTS, and which calls a rule hits."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
import structlog

from services.kit.errors import InjectedFaultError
from services.kit.faults import (
    FaultConfigError,
    FaultPlan,
    FaultRule,
    component_of,
    fault_interceptor,
    parse_rules,
    seed_from_env,
    service_methods,
)
from tripmesh.v1 import hotel_service_pb2 as hotel_pb

pytestmark = pytest.mark.unit

VAR = "TRIPMESH_HOTEL_FAULTS"
HOTEL = hotel_pb.DESCRIPTOR.services_by_name["HotelService"].full_name


UNAV, TEMP = "UNAVAILABLE", "TEMPORARILY_UNAVAILABLE"


def rules(*items: dict[str, Any]) -> tuple[FaultRule, ...]:
    return parse_rules(json.dumps(list(items)), VAR)


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plan(*items: dict[str, Any], seed: int = 7, clock: Clock | None = None) -> FaultPlan:
    return FaultPlan(rules(*items), seed=seed, monotonic=clock or Clock())


def failing_rule(decision_plan: FaultPlan, method: str, request: Any = "") -> int | None:
    failure = decision_plan.decide(method, request).failure
    return None if failure is None else failure[0]


# --- parsing ---------------------------------------------------------------------------------------


def test_a_full_rule_parses() -> None:
    [rule] = rules(
        {
            "method": "Confirm",
            "match": "fail-hotel-confirm",
            "error_rate": 0.5,
            "code": "FAILED_PRECONDITION",
            "reason": "HOLD_EXPIRED",
            "latency_ms": 300,
            "outage": [5, 15],
            "when": "after",
        }
    )
    assert rule == FaultRule(
        method="Confirm",
        match="fail-hotel-confirm",
        error_rate=0.5,
        code=grpc.StatusCode.FAILED_PRECONDITION,
        reason="HOLD_EXPIRED",
        latency_ms=300.0,
        outage=(5.0, 15.0),
        when="after",
        fails=True,
    )


@pytest.mark.parametrize(
    ("raw", "rate", "code", "reason", "fails"),
    [
        ({"method": "Reserve", "error_rate": 0.2}, 0.2, UNAV, TEMP, True),
        ({"method": "Reserve"}, 0.0, UNAV, TEMP, True),
        ({"method": "Reserve", "match": "x"}, 1.0, UNAV, TEMP, True),
        ({"method": "Reserve", "outage": [0, 1]}, 1.0, UNAV, TEMP, True),
        ({"method": "*", "match": "x", "code": "INTERNAL"}, 1.0, "INTERNAL", "INJECTED_FAULT", True),
        ({"method": "Reserve", "latency_ms": 300}, 1.0, UNAV, TEMP, False),
        ({"method": "Reserve", "latency_ms": 300, "error_rate": 0.1}, 0.1, UNAV, TEMP, True),
    ],
)
def test_defaults(raw: dict[str, Any], rate: float, code: str, reason: str, fails: bool) -> None:
    [rule] = rules(raw)
    assert (rule.error_rate, rule.code.name, rule.reason, rule.fails) == (rate, code, reason, fails)
    assert rule.when == "before"


@pytest.mark.parametrize("text", ["", "  ", "[]"])
def test_nothing_configured_is_no_rules(text: str) -> None:
    assert parse_rules(text, VAR) == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[{method: 'Reserve'}]", "not valid JSON"),
        ('{"method": "Reserve"}', "expected a JSON list"),
        ('["Reserve"]', "rule 0: expected a JSON object"),
        ('[{"method": "Reserve", "error_rate": 1}, {"metod": "Reserve"}]', "rule 1: unknown key 'metod'"),
        ('[{"error_rate": 1}]', "'method' is required"),
        ('[{"method": "Reserve", "code": "UNAVAILBLE"}]', "unknown code 'UNAVAILBLE'"),
        ('[{"method": "Reserve", "code": "OK"}]', "code 'OK' is not an error"),
        ('[{"method": "Reserve", "reason": "hold expired"}]', "UPPER_SNAKE"),
        ('[{"method": "Reserve", "error_rate": 1.5}]', "'error_rate' must be a number between 0 and 1"),
        ('[{"method": "Reserve", "error_rate": true}]', "'error_rate' must be a number"),
        ('[{"method": "Reserve", "latency_ms": -1}]', "'latency_ms' must be a number at least 0"),
        ('[{"method": "Reserve", "outage": [15, 5]}]', "'outage' must be [start, end]"),
        ('[{"method": "Reserve", "outage": 5}]', "'outage' must be [start, end]"),
        ('[{"method": "Reserve", "when": "during"}]', "'when' must be"),
        ('[{"method": "", "error_rate": 1}]', "'method' must be a non-empty string"),
        ('[{"method": "Reserve", "match": 42}]', "'match' must be a non-empty string"),
    ],
)
def test_bad_configuration_is_refused_naming_the_variable(text: str, says: str) -> None:
    with pytest.raises(FaultConfigError) as caught:
        parse_rules(text, VAR)
    assert str(caught.value).startswith(f"{VAR}: ")
    assert says in str(caught.value)


def test_a_method_the_component_does_not_serve_is_refused() -> None:
    environ = {VAR: json.dumps([{"method": "Reserv", "error_rate": 1}])}
    with pytest.raises(FaultConfigError, match=r"TRIPMESH_HOTEL_FAULTS: rule 0: no method 'Reserv' here"):
        fault_interceptor("hotel", [HOTEL], environ=environ)


def test_a_bad_seed_is_refused() -> None:
    with pytest.raises(FaultConfigError, match="TRIPMESH_FAULT_SEED: expected an integer"):
        seed_from_env({"TRIPMESH_FAULT_SEED": "abc"})
    assert seed_from_env({"TRIPMESH_FAULT_SEED": "42"}) == 42


def test_no_rules_no_interceptor() -> None:
    assert fault_interceptor("hotel", [HOTEL], environ={}) is None
    assert fault_interceptor("hotel", [HOTEL], environ={VAR: "[]"}) is None


def test_rules_log_the_seed_at_start_up() -> None:
    environ = {VAR: json.dumps([{"method": "Reserve", "error_rate": 0.2}]), "TRIPMESH_FAULT_SEED": "99"}
    with structlog.testing.capture_logs() as logs:
        interceptor = fault_interceptor("hotel", [HOTEL], environ=environ)
    assert interceptor is not None and interceptor.plan.seed == 99
    assert {"event": "fault_injection_enabled", "var": VAR, "rules": 1, "seed": 99}.items() <= logs[0].items()


def test_components_follow_from_the_service_domain() -> None:
    assert [component_of(f"tripmesh.v1.{name}") for name in ("FlightService", "HotelService")] == ["flight", "hotel"]
    assert component_of("tripmesh.v1.NotificationService") == "notify"
    assert component_of("tripmesh.v1.TripCoordinator") == "coordinator"
    assert service_methods([HOTEL]) is not None and "Reserve" in (service_methods([HOTEL]) or [])
    assert service_methods(["tripmesh.v1.NoSuchService"]) is None


# --- matching --------------------------------------------------------------------------------------


def test_method_and_star() -> None:
    only_reserve = plan({"method": "Reserve", "error_rate": 1})
    assert failing_rule(only_reserve, "Reserve") == 0
    assert failing_rule(only_reserve, "Confirm") is None
    assert only_reserve.covers("Reserve") and not only_reserve.covers("Confirm")
    everything = plan({"method": "*", "error_rate": 1})
    assert failing_rule(everything, "Confirm") == 0 and everything.covers("SearchHotels")


def test_match_looks_for_the_substring_anywhere_in_the_request_text() -> None:
    marked = plan({"method": "Confirm", "match": "fail-hotel-confirm"})
    assert failing_rule(marked, "Confirm", 'reservation_id: "trip-fail-hotel-confirm-1/hotel"') == 0
    assert failing_rule(marked, "Confirm", 'reservation_id: "trip-2/hotel"') is None


def test_outage_window_follows_the_clock_from_start() -> None:
    clock = Clock()
    window = plan({"method": "Reserve", "outage": [5, 15]}, clock=clock)
    seen = []
    for elapsed in (0, 4.9, 5, 10, 14.9, 15, 30):
        clock.now = 1000.0 + elapsed
        seen.append(failing_rule(window, "Reserve") == 0)
    assert seen == [False, False, True, True, True, False, False]


def test_error_rate_is_reproducible_with_a_seed() -> None:
    def sequence(seed: int) -> list[bool]:
        twenty_percent = plan({"method": "Reserve", "error_rate": 0.2}, seed=seed)
        return [failing_rule(twenty_percent, "Reserve") == 0 for _ in range(200)]

    first = sequence(1234)
    assert first == sequence(1234)
    assert first != sequence(4321)
    assert 20 <= sum(first) <= 60  # about 40 of 200


def test_rate_zero_and_one_draw_nothing() -> None:
    assert failing_rule(plan({"method": "Reserve", "error_rate": 0}), "Reserve") is None
    assert failing_rule(plan({"method": "Reserve", "error_rate": 1}), "Reserve") == 0


def test_latency_adds_up_and_the_first_failing_rule_decides() -> None:
    combined = plan(
        {"method": "*", "latency_ms": 100},
        {"method": "Reserve", "match": "slow", "latency_ms": 50},
        {"method": "Reserve", "match": "x", "code": "ABORTED", "latency_ms": 200},
        {"method": "Reserve", "error_rate": 1, "code": "INTERNAL"},
    )
    decision = combined.decide("Reserve", "slow x")
    assert decision.delay == pytest.approx(0.35)
    assert decision.failure is not None and decision.failure[0] == 2
    decision = combined.decide("Confirm", "slow x")
    assert decision.delay == pytest.approx(0.1)
    assert decision.failure is None
    decision = combined.decide("Reserve", "plain")
    assert decision.delay == pytest.approx(0.1)
    assert decision.failure is not None and decision.failure[1].code is grpc.StatusCode.INTERNAL


def test_injected_error_carries_its_code_reason_and_retry_hint() -> None:
    unavailable = InjectedFaultError("x", code=grpc.StatusCode.UNAVAILABLE, reason="TEMPORARILY_UNAVAILABLE")
    assert (unavailable.code, unavailable.reason, unavailable.retry_after_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "TEMPORARILY_UNAVAILABLE",
        0.2,
    )
    expired = InjectedFaultError("x", code=grpc.StatusCode.FAILED_PRECONDITION, reason="HOLD_EXPIRED")
    assert (expired.code, expired.reason, expired.retry_after_seconds) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_EXPIRED",
        None,
    )
