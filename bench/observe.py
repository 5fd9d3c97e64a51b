"""What the observed mesh (kind "observed") exports to: an OTLP trace receiver and a Prometheus-like scraper.

`--observability` measures tripmesh with metrics and tracing on against tripmesh with both off, round
by round like the other coordinators. Turned on means every process serves /metrics and is scraped
every `interval` seconds (Prometheus scrapes every 15 s by default: this is harsher), and sends every
span over OTLP/gRPC to a receiver in this process that counts them (a collector's work is not ours).
"""

from __future__ import annotations

import threading
import urllib.request
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        n = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        with self.lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


class Observer:
    """The receiver and the scraper, for one observed round. Use as a context manager."""

    def __init__(self, interval: float = 5.0) -> None:
        self.counter = SpanCounter()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self.counter, self.server)
        self.otlp_port = self.server.add_insecure_port("127.0.0.1:0")
        self.interval = interval
        self.targets: list[str] = []
        self.scrapes = 0
        self.scrape_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scrape_loop, name="bench-scraper", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.otlp_port}"

    def __enter__(self) -> Observer:
        self.server.start()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.stop(0)

    def _scrape_loop(self) -> None:
        while not self._stop.wait(self.interval):
            for address in list(self.targets):
                try:
                    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
                        response.read()
                    self.scrapes += 1
                except OSError:
                    self.scrape_errors += 1
