"""The dashboard's web app (aiohttp + Jinja2): server-rendered pages, a little script, live by SSE.

    GET  /                        trips, newest first; ?state=NEEDS_ATTENTION, ?q=<trip or customer id>
    GET  /fragments/trips         the same list without the page around it (the list page refreshes it)
    GET  /trips/{trip_id}         one trip: the saga as a timeline, its steps, why it failed, Retry
    GET  /trips/{trip_id}/events  server-sent events: the trip page's live part, re-rendered on each
                                  WatchTrip message, until the trip is CONFIRMED or CANCELLED
    POST /trips/{trip_id}/retry   RetryTrip, then back to the trip page
    GET  /healthz                 "ok"

Every piece of data comes from the coordinator's public gRPC API (coordinator/dashboard/client.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import grpc
import jinja2
import structlog
from aiohttp import web

from coordinator.dashboard import timeline
from coordinator.dashboard.client import STATES, CoordinatorClient, apply
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

log = structlog.get_logger("tripmesh.dashboard")

HERE = Path(__file__).parent
TRIP_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CLIENT: web.AppKey[CoordinatorClient] = web.AppKey("client", CoordinatorClient)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
STATE_NAMES = {timeline.state_name(s): s for s in STATES}


def money(value: common_pb.Money) -> str:
    if not value.currency_code:
        return "-"
    return f"{value.minor_units / 100:,.2f} {value.currency_code}"


def utc(stamp: Any) -> str:
    return str(timeline.when(stamp).strftime("%Y-%m-%d %H:%M:%S UTC"))


def trip_ms(trip: trip_pb.Trip) -> float:
    return (timeline.when(trip.update_time) - timeline.when(trip.create_time)).total_seconds() * 1000


def stuck_step(trip: trip_pb.Trip) -> trip_pb.TripStep | None:
    failed = [s for s in trip.steps if s.status == trip_pb.STEP_STATUS_FAILED]
    return failed[-1] if failed else None


def reservation_status(trip: trip_pb.Trip, participant: str) -> str:
    for reservation in trip.reservations:
        if reservation.participant == participant:
            if reservation.status == common_pb.RESERVATION_STATUS_UNSPECIFIED:
                return "PENDING"  # its Reserve has been sent, not answered
            return common_pb.ReservationStatus.Name(reservation.status).removeprefix("RESERVATION_STATUS_")
    refused = any(s.participant == participant and s.status == trip_pb.STEP_STATUS_REFUSED for s in trip.steps)
    return "REFUSED" if refused else ""


def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        money=money,
        utc=utc,
        ms=timeline.fmt_ms,
        state=timeline.state_name,
        step_error=timeline.step_error,
        urlquote=lambda text: quote(str(text), safe=""),
    )
    environment.globals.update(
        trip_ms=trip_ms,
        stuck_step=stuck_step,
        reservation_status=reservation_status,
        states=[timeline.state_name(s) for s in STATES],
        step_status=lambda s: timeline.STATUSES.get(s.status, "running"),
        step_action=lambda s: timeline.ACTIONS.get(s.action, "?"),
    )
    return environment


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    body = request.app[TEMPLATES].get_template(name).render(**context)
    return web.Response(text=body, content_type="text/html", status=status)


def error_page(request: web.Request, error: grpc.aio.AioRpcError) -> web.Response:
    code = error.code()
    status = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}.get(code, 503)
    client = request.app[CLIENT]
    return render(request, "error.html", status, code=code.name, message=error.details() or "", address=client.address)


# --- the trip list ------------------------------------------------------------------------------------


async def _listing(request: web.Request) -> dict[str, Any]:
    client = request.app[CLIENT]
    state_name = request.query.get("state", "").upper().replace("-", "_")
    state = STATE_NAMES.get(state_name, 0)
    query = request.query.get("q", "").strip()
    trips: list[trip_pb.Trip] = []
    if query:
        if TRIP_ID.match(query):
            try:
                trips.append(await client.get(query))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        known = {t.trip_id for t in trips}
        trips += [t for t in await client.list_trips(customer_id=query, page_size=200) if t.trip_id not in known]
        trips = [t for t in trips if not state or t.state == state]
    else:
        trips = await client.list_trips(state=state, page_size=100)
    counts = await client.counts()
    return {
        "trips": trips,
        "counts": counts,
        "total": sum(c.count for c in counts),
        "state": timeline.state_name(state) if state else "",
        "query": query,
        "link": lambda **changes: (
            "/?" + urlencode({k: v for k, v in {"state": "", "q": query, **changes}.items() if v})
        ),
        "fragment_url": "/fragments/trips?" + request.query_string if request.query_string else "/fragments/trips",
    }


async def trip_list(request: web.Request) -> web.Response:
    try:
        return render(request, "trips.html", **await _listing(request))
    except grpc.aio.AioRpcError as error:
        return error_page(request, error)


async def trip_list_fragment(request: web.Request) -> web.Response:
    try:
        return render(request, "_trips.html", **await _listing(request))
    except grpc.aio.AioRpcError as error:
        return error_page(request, error)


# --- one trip -----------------------------------------------------------------------------------------


def _live_context(trip: trip_pb.Trip, **extra: Any) -> dict[str, Any]:
    return {"trip": trip, "timeline": timeline.build(trip, datetime.now(UTC)), "flash": "", "flash_kind": "", **extra}


async def trip_page(request: web.Request) -> web.Response:
    trip_id = request.match_info["trip_id"]
    try:
        trip = await request.app[CLIENT].get(trip_id)
    except grpc.aio.AioRpcError as error:
        return error_page(request, error)
    flash = request.query.get("flash", "")
    kind = request.query.get("kind", "info")
    watch = "" if trip.state in timeline.FINISHED else f"/trips/{quote(trip_id, safe='')}/events"
    return render(request, "trip.html", watch=watch, **_live_context(trip, flash=flash, flash_kind=kind))


async def trip_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `trip` carries the re-rendered live part, `end` says the trip is finished."""
    trip_id = request.match_info["trip_id"]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    live = request.app[TEMPLATES].get_template("_live.html")
    trip: trip_pb.Trip | None = None
    try:
        async for message in request.app[CLIENT].watch(trip_id):
            trip = apply(trip, message)
            if message.WhichOneof("event") == "state":  # reservations and total: GetTrip has them
                trip = await request.app[CLIENT].get(trip_id)
            await _send(response, "trip", live.render(**_live_context(trip)))
        await _send(response, "end", "finished")
    except grpc.aio.AioRpcError as error:
        await _send(response, "failure", f"{error.code().name}: {error.details() or ''}")
    except ConnectionResetError:
        pass  # the browser went away
    return response


async def _send(response: web.StreamResponse, event: str, data: str) -> None:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    await response.write(f"event: {event}\n{lines}\n".encode())


async def retry(request: web.Request) -> web.Response:
    trip_id = request.match_info["trip_id"]
    back = f"/trips/{quote(trip_id, safe='')}"
    try:
        trip = await request.app[CLIENT].retry(trip_id)
    except grpc.aio.AioRpcError as error:
        message = f"Retry refused: {error.code().name}: {error.details() or ''}"
        raise web.HTTPSeeOther(f"{back}?{urlencode({'flash': message, 'kind': 'error'})}") from None
    log.info("trip_retried", trip_id=trip_id, state=timeline.state_name(trip.state))
    message = f"Retry sent: the trip is {timeline.state_name(trip.state)} now"
    raise web.HTTPSeeOther(f"{back}?{urlencode({'flash': message, 'kind': 'info'})}")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def build_app(coordinator_address: str) -> web.Application:
    app = web.Application()
    app[TEMPLATES] = templates()

    async def lifecycle(app: web.Application) -> Any:
        app[CLIENT] = CoordinatorClient(coordinator_address)
        yield
        await app[CLIENT].close()

    app.cleanup_ctx.append(lifecycle)
    app.add_routes(
        [
            web.get("/", trip_list),
            web.get("/fragments/trips", trip_list_fragment),
            web.get("/trips/{trip_id}", trip_page),
            web.get("/trips/{trip_id}/events", trip_events),
            web.post("/trips/{trip_id}/retry", retry),
            web.get("/healthz", healthz),
            web.static("/static", HERE / "static"),
        ]
    )
    return app
