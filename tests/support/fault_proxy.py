"""A fault-injecting HTTP proxy on 127.0.0.1, in front of the moto server.

Clients point their endpoint_url at the proxy; every request is passed to moto
unchanged unless a :class:`Fault` matches it. A fault answers in place of moto: a
500, a 503 or S3's SlowDown, any chosen 4xx with an AWS error code, a connection
reset before any reply, a reset in the middle of the reply's body (moto's real
reply, cut after its headers and part of its bytes), or a slow reply (moto's real reply,
held back for ``seconds``). Faults match on method, path
(a regular expression over path and query) and optionally a predicate, and fire
for a count of matching calls, after some are let through, or with a seeded
probability, so a failing run replays exactly.

The proxy counts what it did (``injected``, per fault and in all), so tests can
report how many faults a run survived.
"""

from __future__ import annotations

import http.client
import http.server
import json
import random
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}

#: What each kind answers when no status is given.
DEFAULT_STATUS = {"500": 500, "503": 503, "slowdown": 503, "error": 400}
DEFAULT_CODE = {"500": "InternalError", "503": "ServiceUnavailable", "slowdown": "SlowDown"}
KINDS = ("500", "503", "slowdown", "error", "reset_before", "reset_mid_body", "delay")


@dataclass
class Request:
    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Fault:
    kind: str
    method: str | None = None
    path: str | None = None  # regex, searched in path+query
    when: Callable[[Request], bool] | None = None
    times: int | None = None  # fire on at most this many matching calls (None: no limit)
    skip: int = 0  # let this many matching calls through first
    probability: float = 1.0
    status: int | None = None
    code: str | None = None
    message: str = "injected by the test's fault proxy"
    cut_at: float = 0.5  # reset_mid_body: share of the body sent before the reset
    seconds: float = 0.0  # delay: how long the reply is held back at most
    released: threading.Event = field(default_factory=threading.Event)  # delay: set it to let held replies go
    holding: int = 0  # delay: replies held back right now
    matched: int = 0
    injected: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {KINDS}")

    def matches(self, request: Request) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        if self.path is not None and not re.search(self.path, request.path):
            return False
        return self.when is None or bool(self.when(request))


@dataclass
class FaultProxy:
    upstream: str  # http://host:port of the moto server
    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        host, _, port = self.upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))

    # -- setup ------------------------------------------------------------------------------------
    def add(self, kind: str, **kwargs) -> Fault:
        fault = Fault(kind, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    @property
    def injected(self) -> int:
        with self._lock:
            return sum(f.injected for f in self.faults)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- deciding ---------------------------------------------------------------------------------
    def _choose(self, request: Request) -> Fault | None:
        with self._lock:
            self.requests += 1
            for fault in self.faults:
                if not fault.matches(request):
                    continue
                fault.matched += 1
                if fault.matched <= fault.skip:
                    continue
                if fault.times is not None and fault.injected >= fault.times:
                    continue
                if fault.probability < 1.0 and self._random.random() >= fault.probability:
                    continue
                fault.injected += 1
                return fault
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the AWS SDKs use it
    owner: FaultProxy

    def log_message(self, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.command, self.path, headers, body)
        fault = self.owner._choose(request)
        if fault is not None and fault.kind == "reset_before":
            return self._reset()
        if fault is not None and fault.kind not in ("reset_mid_body", "delay"):
            return self._answer_error(fault)
        status, reply_headers, reply = self._forward(request)
        if fault is not None and fault.kind == "delay":
            fault.holding += 1
            try:
                fault.released.wait(fault.seconds)
            finally:
                fault.holding -= 1
            fault = None  # then answered as it came
        if fault is not None and len(reply) > 1:
            self._send_head(status, reply_headers, len(reply))
            self.wfile.write(reply[: max(1, int(len(reply) * fault.cut_at))])
            self.wfile.flush()
            return self._reset()
        if self.command == "HEAD":  # upstream's Content-Length stands: a HEAD has no body
            self._send_head(status, reply_headers, None)
            return
        self._send_head(status, reply_headers, len(reply))
        self.wfile.write(reply)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

    def _forward(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.owner._upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            if request.body or request.method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(request.body))
            connection.request(request.method, request.path, body=request.body or None, headers=headers)
            response = connection.getresponse()
            reply = response.read()
            dropped = HOP_HEADERS | ({"content-length"} if request.method != "HEAD" else set())
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in dropped]
            return response.status, kept, reply
        finally:
            connection.close()

    def _send_head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None:
        self.send_response_only(status)
        for key, value in headers:
            self.send_header(key, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _answer_error(self, fault: Fault) -> None:
        status = fault.status or DEFAULT_STATUS[fault.kind]
        code = fault.code or DEFAULT_CODE.get(fault.kind) or "ClientException"
        if self.path.startswith("/v1/") or "x-amz-target" in {k.lower() for k in self.headers}:
            # JSON protocols (Batch, CloudWatch Logs): the code travels in a header and the body.
            body = json.dumps({"__type": code, "message": fault.message}).encode()
            headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)]
        else:
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{fault.message}</Message><RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            headers = [("Content-Type", "application/xml")]
        self._send_head(status, headers, len(body))
        self.wfile.write(body)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send a TCP RST, as a dropped connection does.
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the socket was reset on purpose
            pass


def s3_object_get(request: Request) -> bool:
    """A GET of one object's bytes (not a listing, not a bucket-level call)."""
    if request.method != "GET":
        return False
    path, _, query = request.path.partition("?")
    parts = [p for p in path.split("/") if p]
    return len(parts) >= 2 and "list-type" not in query and "uploads" not in query


def batch_action(action: str) -> Callable[[Request], bool]:
    """A Batch REST-JSON call by action name (DescribeJobs is POST /v1/describejobs)."""
    path = "/v1/" + action.lower()
    return lambda request: request.method == "POST" and request.path.split("?", 1)[0].lower() == path
