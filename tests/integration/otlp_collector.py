"""An OTLP/HTTP trace receiver for the tests: decodes what the workers export with the
OpenTelemetry project's own protobuf definitions (``opentelemetry-proto``), not with our
code, and keeps the spans by trace id."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Collector:
    def __init__(self) -> None:
        self._spans: dict[str, list[tuple[dict[str, Any], Any]]] = defaultdict(list)
        self._changed = threading.Condition()

    def receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self._changed:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self._spans[span.trace_id.hex()].append((resource, span))
            self._changed.notify_all()

    def await_spans(self, trace_id: str, count: int, timeout_s: float = 30
                    ) -> list[tuple[dict[str, Any], Any]]:
        """The spans of ``trace_id`` once at least ``count`` arrived (woken per export)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._spans[trace_id]) >= count, timeout_s)
            return list(self._spans[trace_id])


@contextmanager
def collector(port: int) -> Iterator[Collector]:
    sink = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces" or \
                    self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(400)
                self.end_headers()
                return
            sink.receive(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-collector", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
