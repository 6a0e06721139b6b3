"""control_plane/api_client.py: the CLI's one way to call the running control plane, against a
real HTTP server on localhost (the refusals and their exit codes every wing's commands share)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import typer
from rich.console import Console

from control_plane.api_client import call_api
from control_plane.settings import Settings

ANSWERS = {
    "/ok": (200, {"ok": True}),
    "/rejected": (422, {"error": {"code": "candidate_rejected", "message": "gate accuracy"}}),
    "/busy": (409, {"error": {"code": "busy", "message": "another operation"}}),
    "/no-data": (409, {"error": {"code": "insufficient_data", "message": "12 < 50 samples"}}),
}


class Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("authorization")))
        status, body = ANSWERS.get(self.path.split("?")[0], (500, None))
        data = json.dumps(body).encode() if body is not None else b"<html>boom</html>"
        self.send_response(status)
        self.send_header("content-type", "application/json" if body else "text/html")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def settings_for(port: int, token: str = "tok") -> Settings:
    return Settings(control_url_override=f"http://127.0.0.1:{port}", token=token)


def call(settings: Settings, path: str, **kwargs) -> tuple[int | None, str]:
    console = Console(record=True, width=200)
    try:
        response = call_api(settings, "POST", path, console=console, **kwargs)
    except typer.Exit as exc:
        return exc.exit_code, console.export_text()
    return response.status_code, console.export_text()


def test_answers_refusals_and_exit_codes(server):
    s = settings_for(server.server_address[1])
    assert call(s, "/ok", json={"a": 1}) == (200, "")
    assert server.seen[-1] == ("POST", "/ok", "Bearer tok")
    code, out = call(s, "/rejected")
    assert code == 2 and "refused (422): candidate_rejected: gate accuracy" in out
    code, out = call(s, "/busy")
    assert code == 1 and "refused (409): busy: another operation" in out
    # A refusal the caller accepts comes back as the response.
    assert call(s, "/no-data", ok_codes=("insufficient_data",))[0] == 409
    assert call(s, "/no-data", ok_codes=("busy",))[0] == 1
    code, out = call(s, "/broken")  # not JSON: the body's start is shown
    assert code == 1 and "refused (500): <html>boom</html>" in out
    # No token configured: no authorization header.
    call(settings_for(server.server_address[1], token=""), "/ok")
    assert server.seen[-1][2] is None


def test_an_unreachable_control_plane_exits_1_with_the_url_and_the_hint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    code, out = call(settings_for(port), "/ok", hint="--local reads the index here")
    assert code == 1
    assert f"control plane at http://127.0.0.1:{port} unreachable" in out
    assert "(--local reads the index here)" in out
