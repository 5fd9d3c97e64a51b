"""structlog, configured once per process: readable in a terminal, JSON when asked.

Every line carries the context bound with structlog.contextvars (trip_id, reservation_id, rpc), which
the server interceptor binds from the call's metadata, so one trip can be followed across processes.
Library logs (grpc, sqlalchemy) go through the same renderer. With tracing on (`trace_ids=True`),
every line logged inside a span also carries its `trace_id` and `span_id`, as Jaeger and Tempo show
them, so a log line leads to its trace and back.

Last before rendering, kit.redact masks every e-mail address (a***@example.com) and removes anything
that looks like a card number, in every value of every line, tracebacks included (they are formatted
as text first, so an exception message quoting a request is masked too).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from services.kit.redact import log_redactor

_configured = False


def configure(component: str, *, fmt: str = "console", level: str = "info", trace_ids: bool = False) -> None:
    global _configured
    level_no = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_component(component),
    ]
    if trace_ids:  # only then: with tracing off, no OpenTelemetry import and no per-line cost
        shared.insert(1, _add_trace_ids())
    shared += [structlog.processors.format_exc_info, log_redactor]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_no)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    _configured = True


def _add_component(component: str) -> Any:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", component)
        return event

    return processor


def _add_trace_ids() -> Any:
    from opentelemetry import trace

    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event.setdefault("trace_id", trace.format_trace_id(context.trace_id))
            event.setdefault("span_id", trace.format_span_id(context.span_id))
        return event

    return processor


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
