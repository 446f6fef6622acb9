"""A tiny HTTP server that answers like Flink's REST API, for tests of the commands that talk to a
cluster (`cluster up`, `stop`, ...) without starting Flink.

In a test: `with FakeFlinkRest({"GET /jobs/overview": {...}}) as fake:`, then point the command at
`fake.address` and read `fake.requests`. As a process of its own (`python -m tests.fake_flink
[ANY ARGUMENTS]`) it serves the default answers on a free port, prints the port and runs until
killed; the arguments only show in its command line, where a test can make it look like a
cluster's JVM (`--configDir DIR`).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What Flink 2.2's REST API answers at /overview and /config (abridged): enough to pass for one.
LOOKS_LIKE_FLINK = {
    "GET /overview": {"taskmanagers": 1, "slots-total": 4, "slots-available": 4, "jobs-running": 0,
                      "jobs-finished": 0, "jobs-cancelled": 0, "jobs-failed": 0, "flink-version": "2.2.1",
                      "flink-commit": "0000000"},
    "GET /config": {"refresh-interval": 3000, "timezone-name": "Coordinated Universal Time", "timezone-offset": 0,
                    "flink-version": "2.2.1", "flink-revision": "0000000 @ 2025-01-01T00:00:00+01:00",
                    "features": {"web-submit": False, "web-cancel": False, "web-rescale": False,
                                 "web-history": False}},
}


class FakeFlinkRest:
    """Serves `answers` ("METHOD /path?query" -> the JSON body, None for an empty 202) over
    LOOKS_LIKE_FLINK on 127.0.0.1, on a free port; anything else is a 404 with Flink's error body.
    `requests` lists every request as (method, path with query, JSON body or None), in order."""

    def __init__(self, answers: dict[str, Any] | None = None):
        self.answers = {**LOOKS_LIKE_FLINK, **(answers or {})}
        self.requests: list[tuple[str, str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.fake = self
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"  # as flink.rest_address takes it

    def called(self, method: str, path: str) -> bool:
        return any((made, called) == (method, path) for made, called, _ in self.requests)

    def __enter__(self) -> "FakeFlinkRest":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        fake.requests.append((self.command, self.path, body))
        key = f"{self.command} {self.path}"
        if key not in fake.answers:
            self._send(404, {"errors": ["Not found: " + self.path]})
        elif fake.answers[key] is None:
            self._send(202, None)
        else:
            self._send(200, fake.answers[key])

    def _send(self, status: int, answer: Any) -> None:
        payload = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, format, *args) -> None:  # quiet: a test reads `requests` instead
        pass


if __name__ == "__main__":
    fake = FakeFlinkRest()
    print(fake.port, flush=True)
    fake.server.serve_forever()
