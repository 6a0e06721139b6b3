"""A local HTTP receiver for webhook tests (the gateway's zone events, the control plane's
notifications), and the receiving side's signature check written from the documented scheme,
not with tracker_service/webhooks.py."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """A real HTTP server on a free port: /fail answers 500, /slow sleeps `slow_s` first, /hang
    holds the request until `release` is set, any other path answers 200. Every request is
    recorded with its path; `entered` is set when one arrives."""

    def __init__(self, slow_s: float = 1.5) -> None:
        self.requests: list[tuple[str, dict, bytes]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                receiver.entered.set()
                if self.path == "/slow":
                    time.sleep(slow_s)
                if self.path == "/hang":
                    receiver.release.wait(30)
                try:
                    self.send_response(500 if self.path == "/fail" else 200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up on us

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def on(self, path: str) -> list[tuple[dict, bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.requests if p == path]


@contextmanager
def receiving(slow_s: float = 1.5) -> Iterator[Receiver]:
    """A running Receiver, shut down (and any held request released) at the end."""
    r = Receiver(slow_s)
    r.thread.start()
    try:
        yield r
    finally:
        r.release.set()
        r.server.shutdown()
        r.server.server_close()


def signature_ok(headers: dict, body: bytes, secret: str) -> bool:
    """X-VisionGuard-Signature is sha256=HMAC(secret, "<timestamp>." + body), and the timestamp
    is within a minute."""
    ts = headers["X-VisionGuard-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return (hmac.compare_digest(expected, headers["X-VisionGuard-Signature"])
            and abs(time.time() - int(ts)) < 60)
