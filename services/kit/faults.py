"""Fault injection by configuration: errors, lost replies and latency, with no code edit.

Each component reads `TRIPMESH_<COMPONENT>_FAULTS` (for example `TRIPMESH_HOTEL_FAULTS`): a JSON list
of rules. With no rules (unset, empty or `[]`) nothing is installed, not even a wrapper. With rules,
build_server installs FaultInterceptor inside the error interceptor, so an injected error travels
exactly like a real one: a rich status with ErrorInfo (and RetryInfo for UNAVAILABLE).

    [{"method": "Reserve", "error_rate": 0.2},
     {"method": "Confirm", "match": "fail-payment-confirm", "code": "FAILED_PRECONDITION",
      "reason": "HOLD_EXPIRED"}]

Keys of a rule (any other key is refused):

- `method` (required): the RPC's method name (`Reserve`, `BookTrip`, ...) or `"*"` for every method of
  the component's own services. Health and reflection are never faulted. A name the component does
  not serve is refused.
- `match`: only calls whose request text (`str(request)`: every field, e.g. the reservation id, which
  contains the trip id, or a payment_method_id) contains this substring. Confirm, Cancel and
  GetReservation carry only the reservation id, so a marker for them goes in the trip id.
- `outage`: `[start, end]`, seconds since the server was built (process start); the rule applies only
  when `start <= t < end`.
- `error_rate`: the probability, 0..1, that a call passing the filters above fails. Default 1.0 when
  `match` or `outage` is given, else 0 (an inert rule: a warning is logged).
- `code`: the status code name to fail with (default `UNAVAILABLE`).
- `reason`: the ErrorInfo reason, UPPER_SNAKE (default `TEMPORARILY_UNAVAILABLE` for UNAVAILABLE,
  else `INJECTED_FAULT`).
- `latency_ms`: wait this long before the handler. A rule with `latency_ms` and none of `error_rate`,
  `code`, `reason` is latency-only: it delays every call passing its filters and fails none. Otherwise
  the wait comes first and then the error, for the calls the rule fails (a slow failure).
- `when`: `"before"` (default): fail without running the handler, so nothing happened. `"after"`: run
  the handler (the effect happens, e.g. a hold is taken), then answer the error instead of its reply,
  a lost reply. If the handler itself fails, its own error is answered.

Rules are tried in order for each call: the latency of every latency-only rule that applies is added
up, and the first failing rule that fires decides the error (later rules are not consulted).
`TRIPMESH_FAULT_SEED` (an int) seeds the random draws so a run can be replayed; without it a seed is
chosen and logged (`fault_injection_enabled`). Each injected fault is logged once as `fault_injected`
with the method, the rule's index, the code and `when`. Invalid JSON, an unknown key, code or method,
or an out-of-range value refuses to start: FaultConfigError names the variable and the rule.

Only unary-unary methods are faulted (every tripmesh RPC is one).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import structlog
from google.protobuf import descriptor_pool

from services.kit.errors import InjectedFaultError
from services.kit.wrapping import HandlerCache

log = structlog.get_logger("tripmesh.faults")

SEED_VAR = "TRIPMESH_FAULT_SEED"
ANY_METHOD = "*"
NEVER_FAULTED = ("/grpc.health.", "/grpc.reflection.")
KEYS = frozenset({"method", "match", "error_rate", "code", "reason", "latency_ms", "outage", "when"})
CODES = {code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}
REASON = re.compile(r"[A-Z][A-Z0-9_]*\Z")

# The component whose TRIPMESH_<COMPONENT>_* variables configure the server for each service domain.
COMPONENT_OF_SERVICE = {
    "FlightService": "flight",
    "HotelService": "hotel",
    "PaymentService": "payment",
    "NotificationService": "notify",
    "TripCoordinator": "coordinator",
}


class FaultConfigError(ValueError):
    """The fault configuration is unusable; the process must not start."""


@dataclass(frozen=True)
class FaultRule:
    method: str
    match: str | None = None
    error_rate: float = 0.0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    reason: str = "TEMPORARILY_UNAVAILABLE"
    latency_ms: float = 0.0
    outage: tuple[float, float] | None = None
    when: Literal["before", "after"] = "before"
    fails: bool = True  # False for a latency-only rule

    def applies(self, method: str, request_text: Callable[[], str], elapsed: float) -> bool:
        """Whether the call passes this rule's filters (method, outage window, match)."""
        if self.method not in (ANY_METHOD, method):
            return False
        if self.outage is not None and not self.outage[0] <= elapsed < self.outage[1]:
            return False
        return self.match is None or self.match in request_text()


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one call: wait `delay` seconds, then fail with `failure` (rule index, rule) if any."""

    delay: float = 0.0
    failure: tuple[int, FaultRule] | None = None


def component_of(domain: str) -> str:
    """The component name of a service domain: `tripmesh.v1.HotelService` -> `hotel`."""
    name = domain.rsplit(".", 1)[-1]
    return COMPONENT_OF_SERVICE.get(name, name.removesuffix("Service").lower())


def faults_var(component: str) -> str:
    return f"TRIPMESH_{component.upper()}_FAULTS"


def parse_rules(text: str, var: str) -> tuple[FaultRule, ...]:
    """Parse a JSON list of rules; raise FaultConfigError naming `var` (and the rule) when it is wrong."""
    if not text.strip():
        return ()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise FaultConfigError(f"{var}: not valid JSON ({error})") from None
    if not isinstance(raw, list):
        raise FaultConfigError(f"{var}: expected a JSON list of rules, got {type(raw).__name__}")
    return tuple(_parse_rule(item, f"{var}: rule {index}") for index, item in enumerate(raw))


def _parse_rule(raw: Any, where: str) -> FaultRule:
    if not isinstance(raw, dict):
        raise FaultConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise FaultConfigError(f"{where}: unknown key {names} (known: {', '.join(sorted(KEYS))})")
    method = _text(raw, "method", where)
    if method is None:
        raise FaultConfigError(f"{where}: 'method' is required (a method name, or \"*\" for all)")
    match = _text(raw, "match", where)
    outage = _outage(raw.get("outage"), where)
    latency_ms = _number(raw, "latency_ms", where, 0.0, math.inf) or 0.0
    fails = not latency_ms or any(key in raw for key in ("error_rate", "code", "reason"))
    default_rate = 1.0 if match is not None or outage is not None or not fails else 0.0
    error_rate = _number(raw, "error_rate", where, 0.0, 1.0)
    code_name = _text(raw, "code", where) or "UNAVAILABLE"
    if code_name == "OK":
        raise FaultConfigError(f"{where}: code 'OK' is not an error; for a latency-only rule leave 'code' out")
    if code_name not in CODES:
        raise FaultConfigError(f"{where}: unknown code {code_name!r} (one of: {', '.join(CODES)})")
    code = CODES[code_name]
    reason = _text(raw, "reason", where)
    if reason is not None and not REASON.match(reason):
        raise FaultConfigError(f"{where}: reason {reason!r} must be UPPER_SNAKE, e.g. HOLD_EXPIRED")
    when = raw.get("when", "before")
    if when not in ("before", "after"):
        raise FaultConfigError(f'{where}: \'when\' must be "before" or "after", got {when!r}')
    return FaultRule(
        method=method,
        match=match,
        error_rate=default_rate if error_rate is None else error_rate,
        code=code,
        reason=reason or ("TEMPORARILY_UNAVAILABLE" if code is grpc.StatusCode.UNAVAILABLE else "INJECTED_FAULT"),
        latency_ms=latency_ms,
        outage=outage,
        when=when,
        fails=fails,
    )


def _text(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FaultConfigError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _number(raw: dict[str, Any], key: str, where: str, low: float, high: float) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        bounds = f"between {low:g} and {high:g}" if high < math.inf else f"at least {low:g}"
        raise FaultConfigError(f"{where}: {key!r} must be a number {bounds}, got {value!r}")
    return float(value)


def _outage(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    )
    if not ok:
        raise FaultConfigError(f"{where}: 'outage' must be [start, end] seconds with 0 <= start < end, got {value!r}")
    return float(value[0]), float(value[1])


def check_methods(rules: Sequence[FaultRule], known: Iterable[str], var: str) -> None:
    """Refuse a rule naming a method the component does not serve (a typo would silently inject nothing)."""
    names = set(known)
    for index, rule in enumerate(rules):
        if rule.method != ANY_METHOD and rule.method not in names:
            raise FaultConfigError(
                f'{var}: rule {index}: no method {rule.method!r} here (one of: {", ".join(sorted(names))}, or "*")'
            )


def service_methods(service_names: Iterable[str]) -> list[str] | None:
    """Method names of the services, from the descriptor pool; None when a service is not in it."""
    pool = descriptor_pool.Default()
    methods: list[str] = []
    for name in service_names:
        try:
            methods.extend(m.name for m in pool.FindServiceByName(name).methods)
        except KeyError:
            return None
    return methods


def seed_from_env(environ: Mapping[str, str]) -> int:
    text = environ.get(SEED_VAR, "").strip()
    if not text:
        return random.SystemRandom().randrange(2**32)
    try:
        return int(text)
    except ValueError:
        raise FaultConfigError(f"{SEED_VAR}: expected an integer, got {text!r}") from None


class FaultPlan:
    """The rules, a seeded random source and a monotonic clock: decides what to inject into each call."""

    def __init__(
        self, rules: Sequence[FaultRule], *, seed: int, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.rules = tuple(rules)
        self.seed = seed
        self._random = random.Random(seed)
        self._monotonic = monotonic
        self._started = monotonic()
        self.methods = {rule.method for rule in self.rules}

    def covers(self, method: str) -> bool:
        return ANY_METHOD in self.methods or method in self.methods

    def decide(self, method: str, request: Any) -> FaultDecision:
        elapsed = self._monotonic() - self._started
        text: list[str] = []

        def request_text() -> str:
            if not text:
                text.append(str(request))
            return text[0]

        delay = 0.0
        for index, rule in enumerate(self.rules):
            if not rule.applies(method, request_text, elapsed) or not self._fires(rule):
                continue
            delay += rule.latency_ms / 1000
            if rule.fails:
                return FaultDecision(delay, (index, rule))
            log.info("fault_injected", method=method, rule=index, code=None, when=None, latency_ms=rule.latency_ms)
        return FaultDecision(delay)

    def _fires(self, rule: FaultRule) -> bool:
        if not rule.fails or rule.error_rate >= 1.0:
            return True
        return rule.error_rate > 0.0 and self._random.random() < rule.error_rate


class FaultInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Applies a FaultPlan to the unary calls its rules name; other handlers pass through unwrapped."""

    def __init__(self, plan: FaultPlan, var: str) -> None:
        self.plan = plan
        self._var = var
        self._cache = HandlerCache()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        full = details.method
        method = full.rsplit("/", 1)[-1]
        if handler is None or handler.unary_unary is None or full.startswith(NEVER_FAULTED):
            return handler
        if not self.plan.covers(method):
            return handler
        return self._cache.get(
            full,
            handler,
            lambda inner: grpc.unary_unary_rpc_method_handler(
                self._wrap(inner.unary_unary, method),
                request_deserializer=inner.request_deserializer,
                response_serializer=inner.response_serializer,
            ),
        )

    def _wrap(self, behaviour: Any, method: str) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            decision = self.plan.decide(method, request)
            if decision.delay:
                await asyncio.sleep(decision.delay)  # cancelled with the call (deadline, client gone)
            if decision.failure is None:
                return await behaviour(request, context)
            index, rule = decision.failure
            if rule.when == "after":
                await behaviour(request, context)
            log.info(
                "fault_injected",
                method=method,
                rule=index,
                code=rule.code.name,
                when=rule.when,
                latency_ms=rule.latency_ms,
            )
            raise InjectedFaultError(
                f"injected fault: {self._var} rule {index} ({rule.code.name}, {rule.when} the handler)",
                code=rule.code,
                reason=rule.reason,
                metadata={"fault_rule": str(index)},
            )

        return wrapped


def fault_interceptor(
    component: str,
    service_names: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> FaultInterceptor | None:
    """The component's fault interceptor, or None when it has no rules. Raises FaultConfigError."""
    environ = os.environ if environ is None else environ
    var = faults_var(component)
    rules = parse_rules(environ.get(var, ""), var)
    if not rules:
        return None
    known = service_methods(service_names)
    if known is not None:
        check_methods(rules, known, var)
    plan = FaultPlan(rules, seed=seed_from_env(environ), monotonic=monotonic)
    log.warning("fault_injection_enabled", var=var, rules=len(rules), seed=plan.seed)
    for index, rule in enumerate(rules):
        if rule.fails and rule.error_rate == 0.0:
            log.warning("fault_rule_inert", var=var, rule=index, hint="give error_rate, match or outage")
    return FaultInterceptor(plan, var)
