"""A stand-in for the EC2 instance metadata service (IMDSv2) on 127.0.0.1, for the worker's cost.

It speaks what the worker asks: ``PUT /latest/api/token`` with a TTL header returns a token, and
``GET /latest/meta-data/<key>`` answers only with that token (401 without it, as IMDSv2 does).
``v1_only`` answers the token request with 405 (an IMDSv1-only instance) and serves GETs without
a token; ``token_status`` makes the token request fail with that status (403: IMDS turned off);
``delay_s`` holds every answer that long (a service too slow for the caller's timeout). Every
request is recorded as (method, path, token header).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "AQAEA-stand-in-token"


@dataclass
class Imds:
    url: str
    metadata: dict[str, str]
    v1_only: bool = False
    token_status: int | None = None
    delay_s: float = 0.0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)


@contextmanager
def imds_stand_in(instance_type: str = "g5.xlarge", life_cycle: str = "on-demand", **options) -> Iterator[Imds]:
    state: Imds | None = None

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _answer(self, status: int, body: str = "") -> None:
            time.sleep(state.delay_s)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            state.requests.append(("PUT", self.path, self.headers.get("X-aws-ec2-metadata-token")))
            if self.path != "/latest/api/token":
                return self._answer(404)
            if state.v1_only:
                return self._answer(405)
            if state.token_status:
                return self._answer(state.token_status)
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._answer(400)
            self._answer(200, TOKEN)

        def do_GET(self) -> None:
            token = self.headers.get("X-aws-ec2-metadata-token")
            state.requests.append(("GET", self.path, token))
            if not state.v1_only and token != TOKEN:
                return self._answer(401)
            key = self.path.removeprefix("/latest/meta-data/")
            if key not in state.metadata:
                return self._answer(404)
            self._answer(200, state.metadata[key])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = Imds(
        f"http://127.0.0.1:{server.server_address[1]}",
        {"instance-type": instance_type, "instance-life-cycle": life_cycle},
        **options,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> str:
    """A 127.0.0.1 URL where nothing listens (a machine without IMDS answers the same way)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
