"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against a real mesh.

The mesh as `tripmesh up` starts it (the launcher's plan and start, dashboard included, free ports),
with the hotel unable to cancel anything of trips marked "stuck" and a small cancel budget, so one
trip parks in NEEDS_ATTENTION until the hotel is restarted without the fault. Booked through the
coordinator's API: a confirmed trip, a compensated one (declined card), a stuck one, and a slow one
followed live. Then the checks a person makes by looking: every lane's reserve and confirm bars and
the commit line before the confirms; the cancel bars in reverse order of reservation; the stuck
trip's reason and a Retry button that, once the hotel is back, takes it to CANCELLED on the page.
Screenshots go to var/test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from coordinator.launcher import PARTICIPANTS, Launcher, MeshPlan, mesh_plan, start_mesh
from tests.support.processes import METRICS, PORT_PREFIXES, REPO, free_ports, mesh_env
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "var" / "test-artifacts" / "dashboard"
SLOW_MS = 4000  # the hotel's Reserve for "slow" trips: long enough to watch the page change
LANES = ("flight", "hotel", "payment", "notify")


def booking(trip_id: str, payment_method: str = "pm_ada_visa", customer: str = "cust-ada") -> trip_pb.BookTripRequest:
    return trip_pb.BookTripRequest(
        trip_id=trip_id,
        customer=trip_pb.Customer(customer_id=customer, email="ada@example.com", name="Ada Lovelace"),
        flight=trip_pb.TripFlight(
            outbound_flight_id="TM101-20270315",
            return_flight_id="TM102-20270322",
            cabin=flight_pb.CABIN_ECONOMY,
            passenger_count=1,
        ),
        hotel=trip_pb.TripHotel(
            hotel_id="lis-chiado",
            room_type=hotel_pb.ROOM_TYPE_STANDARD,
            check_in=common_pb.Date(year=2027, month=3, day=15),
            check_out=common_pb.Date(year=2027, month=3, day=17),
        ),
        payment_method_id=payment_method,
        currency_code="EUR",
    )


@dataclass
class Mesh:
    launcher: Launcher
    plan: MeshPlan

    def address(self, name: str) -> str:
        return next(p.address for p in self.plan.processes if p.component.name == name)

    def restart_hotel_without_faults(self) -> None:
        """Stop the hotel by PID and start it again on the same port and database, faults lifted."""
        child = self.launcher.child("hotel")
        assert child is not None
        child.process.terminate()
        child.process.wait(timeout=10)
        self.launcher.children.remove(child)
        hotel = next(p for p in self.plan.processes if p.component.name == "hotel")
        env = {k: v for k, v in self.plan.env.items() if k != "TRIPMESH_HOTEL_FAULTS"}
        self.launcher.start("hotel", hotel.component.module, env, probe=hotel.probe)
        self.launcher.wait_healthy("hotel", timeout=30)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install -y chromium (.ci/run installs it)")
    work = tmp_path_factory.mktemp("dashboard")
    env = mesh_env(dict(zip(PORT_PREFIXES, free_ports(len(PORT_PREFIXES)), strict=True)))
    env["TRIPMESH_LOG_LEVEL"] = "warning"
    env.update({f"TRIPMESH_{PORT_PREFIXES[name]}_METRICS_PORT": "0" for name in METRICS})  # not this test's
    plan = mesh_plan(env, var_dir=str(work / "var"), dashboard=True)
    hotel_faults = [
        {"method": "Cancel", "match": "stuck", "code": "UNAVAILABLE"},
        {"method": "Reserve", "match": "slow", "latency_ms": SLOW_MS},
        {"method": "Reserve", "latency_ms": 40},  # bars wide enough to read
    ]
    plan.env.update(
        {
            "TRIPMESH_HOTEL_FAULTS": json.dumps(hotel_faults),
            "TRIPMESH_COORDINATOR_CANCEL_ATTEMPTS": "2",
            "TRIPMESH_COORDINATOR_INITIAL_BACKOFF_SECONDS": "0.02",
            "TRIPMESH_COORDINATOR_MAX_BACKOFF_SECONDS": "0.05",
        }
    )
    (work / "var" / "mail").mkdir(parents=True)
    launcher = Launcher(base_env=env, cwd=REPO, log_dir=work / "logs")
    try:
        start_mesh(launcher, plan, timeout=60)
        assert len(launcher.children) == len(PARTICIPANTS) + 3  # the sink, the coordinator, the dashboard
        yield Mesh(launcher, plan)
    finally:
        codes = launcher.stop_all(grace=5)
        assert all(code is not None for code in codes.values()), codes


@pytest.fixture(scope="module")
def trips(mesh: Mesh) -> dict[str, trip_pb.Trip]:
    """The stuck trip first (it must fail its Cancel inside the outage), then the others."""
    with grpc.insecure_channel(mesh.address("coordinator")) as channel:
        stub = trip_grpc.TripCoordinatorStub(channel)
        booked = {
            name: stub.BookTrip(booking(trip_id, payment), timeout=30).trip
            for name, trip_id, payment in (
                ("stuck", "ui-stuck-1", "pm_ada_declined"),
                ("confirmed", "ui-lisbon-1", "pm_ada_visa"),
                ("compensated", "ui-declined-1", "pm_ada_declined"),
            )
        }
    assert booked["stuck"].state == common_pb.TRIP_STATE_NEEDS_ATTENTION, booked["stuck"]
    assert booked["confirmed"].state == common_pb.TRIP_STATE_CONFIRMED, booked["confirmed"].failure_reason
    assert booked["compensated"].state == common_pb.TRIP_STATE_CANCELLED
    return booked


@pytest.fixture
async def page(mesh: Mesh) -> AsyncIterator[object]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with playwright_api.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 860}, base_url=f"http://{mesh.address('dashboard')}"
            )
            context.set_default_timeout(10_000)
            yield await context.new_page()
        finally:
            await browser.close()


def expect(locator: object) -> object:
    return playwright_api.expect(locator)


async def bars(page: object, trip_id: str) -> dict[str, dict[str, str | float]]:
    """Every bar of the timeline: its data attributes and where it is drawn (px)."""
    found = await page.eval_on_selector_all(  # type: ignore[attr-defined]
        ".bar",
        """els => els.map(e => { const r = e.getBoundingClientRect();
             return {...e.dataset, lane: e.closest('.lane').dataset.participant, x: r.left, right: r.right}; })""",
    )
    return {b["step"]: b for b in found}


async def test_the_list_shows_live_counts_filters_and_search(page: object, trips: dict[str, trip_pb.Trip]) -> None:
    await page.goto("/")  # type: ignore[attr-defined]
    counts = page.locator(".counts")  # type: ignore[attr-defined]
    await expect(counts.locator('[data-state="NEEDS_ATTENTION"] .n')).to_have_text("1")
    await expect(counts.locator('[data-state="CONFIRMED"] .n')).to_have_text("1")
    await expect(counts.locator('[data-state="CANCELLED"] .n')).to_have_text("1")
    rows = page.locator("table.trips tbody tr")  # type: ignore[attr-defined]
    await expect(rows).to_have_count(3)
    await page.screenshot(path=ARTIFACTS / "list.png", full_page=True)  # type: ignore[attr-defined]

    # filter by state: a click on the count
    await counts.locator('[data-state="NEEDS_ATTENTION"]').click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-trip", "ui-stuck-1")
    await expect(rows.first.locator(".reason")).to_contain_text("hotel.cancel kept failing")

    # search by trip id, then by customer id
    await page.goto("/")  # type: ignore[attr-defined]
    await page.fill("input[name=q]", "ui-lisbon-1")  # type: ignore[attr-defined]
    await page.press("input[name=q]", "Enter")  # type: ignore[attr-defined]
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-trip", "ui-lisbon-1")
    await page.goto("/?q=cust-ada")  # type: ignore[attr-defined]
    await expect(rows).to_have_count(3)
    await page.goto("/?q=cust-nobody")  # type: ignore[attr-defined]
    await expect(page.locator(".empty")).to_contain_text("No trips")  # type: ignore[attr-defined]


async def test_a_confirmed_trip_has_reserve_and_confirm_bars_in_every_lane(
    page: object, trips: dict[str, trip_pb.Trip]
) -> None:
    await page.goto("/trips/ui-lisbon-1")  # type: ignore[attr-defined]
    await expect(page.locator("#trip-state")).to_have_text("CONFIRMED")  # type: ignore[attr-defined]
    drawn = await bars(page, "ui-lisbon-1")
    for lane in LANES:
        for action in ("reserve", "confirm"):
            bar = drawn[f"{lane}.{action}"]
            assert (bar["lane"], bar["action"], bar["status"]) == (lane, action, "succeeded"), bar
            assert float(bar["durationMs"]) > 0
    assert not [b for b in drawn.values() if b["action"] == "cancel"]
    # the commit decision is drawn after every reserve ended and at the first confirm
    commit = await page.locator('[data-marker="commit"]').bounding_box()  # type: ignore[attr-defined]
    assert commit is not None
    reserves_end = max(b["right"] for b in drawn.values() if b["action"] == "reserve")
    confirms_start = min(b["x"] for b in drawn.values() if b["action"] == "confirm")
    assert reserves_end - 1 <= commit["x"] <= confirms_start + 2, (commit, reserves_end, confirms_start)
    # the customer is charged last: payment.confirm starts after flight and hotel are confirmed
    assert drawn["payment.confirm"]["x"] >= max(drawn["flight.confirm"]["right"], drawn["hotel.confirm"]["right"]) - 1
    durations = await page.locator("table.steps td.num:nth-child(6)").all_inner_texts()  # type: ignore[attr-defined]
    assert len(durations) == 8 and all(re.fullmatch(r"[\d.,]+ ms", d) for d in durations), durations
    await page.screenshot(path=ARTIFACTS / "confirmed.png", full_page=True)  # type: ignore[attr-defined]


async def test_a_compensated_trip_shows_its_cancels_in_reverse_order(
    page: object, trips: dict[str, trip_pb.Trip]
) -> None:
    await page.goto("/trips/ui-declined-1")  # type: ignore[attr-defined]
    await expect(page.locator("#trip-state")).to_have_text("CANCELLED")  # type: ignore[attr-defined]
    await expect(page.locator("#reason")).to_contain_text("CARD_DECLINED")  # type: ignore[attr-defined]
    drawn = await bars(page, "ui-declined-1")
    assert drawn["payment.reserve"]["status"] == "refused"
    cancels = {name: b for name, b in drawn.items() if b["action"] == "cancel"}
    assert set(cancels) == {"notify.cancel", "flight.cancel", "hotel.cancel"}
    assert all(b["status"] == "succeeded" for b in cancels.values())
    # reserved flight + hotel, then notify; undone notify first, then flight + hotel together
    assert drawn["notify.reserve"]["x"] > max(drawn["flight.reserve"]["x"], drawn["hotel.reserve"]["x"])
    assert cancels["notify.cancel"]["undo"] == "1"
    assert cancels["flight.cancel"]["undo"] == cancels["hotel.cancel"]["undo"] == "2"
    assert cancels["notify.cancel"]["right"] <= min(cancels["flight.cancel"]["x"], cancels["hotel.cancel"]["x"]) + 1
    await expect(page.locator('[data-marker="compensate"]')).to_have_count(1)  # type: ignore[attr-defined]
    await expect(page.locator('[data-marker="commit"]')).to_have_count(0)  # type: ignore[attr-defined]
    await page.screenshot(path=ARTIFACTS / "compensated.png", full_page=True)  # type: ignore[attr-defined]


async def test_a_running_trip_updates_live(page: object, mesh: Mesh, trips: dict[str, trip_pb.Trip]) -> None:
    channel = grpc.aio.insecure_channel(mesh.address("coordinator"))
    try:
        stub = trip_grpc.TripCoordinatorStub(channel)
        booked = stub.BookTrip(booking("ui-slow-1"), timeout=30)
        for _ in range(200):  # the trip is readable once it is durable
            try:
                await stub.GetTrip(trip_pb.GetTripRequest(trip_id="ui-slow-1"), timeout=5)
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
        await page.goto("/trips/ui-slow-1")  # type: ignore[attr-defined]
        await expect(page.locator("#trip-state")).to_have_text("RESERVING")  # type: ignore[attr-defined]
        await expect(page.locator('.bar[data-step="hotel.reserve"]')).to_have_attribute(  # type: ignore[attr-defined]
            "data-status", "running"
        )
        await page.evaluate("window.notReloaded = true")  # type: ignore[attr-defined]
        await page.screenshot(path=ARTIFACTS / "running.png", full_page=True)  # type: ignore[attr-defined]
        assert (await booked).trip.state == common_pb.TRIP_STATE_CONFIRMED
        await expect(page.locator("#trip-state")).to_have_text("CONFIRMED")  # type: ignore[attr-defined]
        await expect(page.locator('.bar[data-step="payment.confirm"]')).to_have_attribute(  # type: ignore[attr-defined]
            "data-status", "succeeded"
        )
        assert await page.evaluate("window.notReloaded") is True  # type: ignore[attr-defined]
    finally:
        await channel.close()


async def test_a_stuck_trip_shows_why_and_its_retry_button_works(
    page: object, mesh: Mesh, trips: dict[str, trip_pb.Trip]
) -> None:
    await page.goto("/trips/ui-stuck-1")  # type: ignore[attr-defined]
    await expect(page.locator("#trip-state")).to_have_text("NEEDS ATTENTION")  # type: ignore[attr-defined]
    attention = page.locator("#attention")  # type: ignore[attr-defined]
    await expect(attention.locator("h2")).to_contain_text("stuck at hotel.cancel")
    await expect(attention.locator("#reason")).to_contain_text("CARD_DECLINED")
    await expect(attention.locator("#reason")).to_contain_text("hotel.cancel kept failing (UNAVAILABLE")
    drawn = await bars(page, "ui-stuck-1")
    assert (drawn["hotel.cancel"]["status"], drawn["hotel.cancel"]["attempts"]) == ("failed", "2")
    assert drawn["flight.cancel"]["status"] == "succeeded"
    await page.screenshot(path=ARTIFACTS / "stuck.png", full_page=True)  # type: ignore[attr-defined]

    # the hotel comes back (restarted without the fault); the operator presses Retry
    mesh.restart_hotel_without_faults()
    await page.click("#retry")  # type: ignore[attr-defined]
    await expect(page.locator(".flash")).to_contain_text("Retry sent")  # type: ignore[attr-defined]
    await expect(page.locator("#trip-state")).to_have_text("CANCELLED")  # type: ignore[attr-defined]
    await expect(page.locator('.bar[data-step="hotel.cancel"]')).to_have_attribute(  # type: ignore[attr-defined]
        "data-status", "succeeded"
    )
    await expect(page.locator("#attention")).to_have_count(0)  # type: ignore[attr-defined]
    await page.screenshot(path=ARTIFACTS / "retried.png", full_page=True)  # type: ignore[attr-defined]
