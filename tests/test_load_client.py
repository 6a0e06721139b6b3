"""The benches' load generator (bench/gateway_load.py): a keep-alive HTTP/1.1 client whose
answers the gateway benches count, checked against a real uvicorn server.

What it must get right, since every serving figure in the README comes through it: the status
and body of each response (content-length and chunked), the connection kept across requests,
a connection the server closes reopened, and a refused request counted as an error rather than
a latency."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import uvicorn

from bench.gateway_load import KeepAliveClient, gateway_level
from tests.conftest import free_ports


class App:
    """Routes: /v1/detect answers 200 with timings_ms (content-length), /chunked streams its
    body, /close answers with `connection: close`, /refuse answers 503. Counts connections."""

    def __init__(self) -> None:
        self.connections: set[tuple] = set()
        self.requests = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.connections.add(tuple(scope["client"]))
        self.requests += 1
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        status, headers = 200, [(b"content-type", b"application/json")]
        payload = json.dumps({"bytes": len(body), "timings_ms": {"total": 1.5}}).encode()
        if path == "/refuse":
            status = 503
        if path == "/close":
            headers.append((b"connection", b"close"))
        if path == "/chunked":  # no content-length: uvicorn sends it chunked
            await send({"type": "http.response.start", "status": status, "headers": headers})
            for i in range(0, len(payload), 7):
                await send({"type": "http.response.body", "body": payload[i:i + 7],
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def server():
    app = App()
    (port,) = free_ports(1)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield app, port
    srv.should_exit = True
    thread.join(10)


def test_keepalive_reuses_one_connection_and_reads_each_body(server):
    app, port = server
    body = bytes(range(256)) * 600  # a JPEG-sized upload

    async def go():
        client = KeepAliveClient("127.0.0.1", port)
        try:
            answers = [await client.post("/v1/detect", body, "image/jpeg") for _ in range(5)]
            answers.append(await client.post("/chunked", body, "image/jpeg"))
        finally:
            await client.close()
        return answers

    answers = asyncio.run(go())
    assert [status for status, _ in answers] == [200] * 6
    assert all(json.loads(content)["bytes"] == len(body) for _, content in answers)
    assert len(app.connections) == 1
    assert app.requests == 6


def test_a_connection_the_server_closes_is_reopened(server):
    app, port = server

    async def go():
        client = KeepAliveClient("127.0.0.1", port)
        try:
            return [await client.post(path, b"x", "image/jpeg")
                    for path in ("/close", "/v1/detect", "/close", "/v1/detect")]
        finally:
            await client.close()

    answers = asyncio.run(go())
    assert [status for status, _ in answers] == [200] * 4
    assert len(app.connections) == 3  # a new one after each close


@pytest.mark.parametrize("client", ["keepalive", "httpx"])
def test_gateway_level_counts_answers_and_errors(server, client):
    app, port = server
    url = f"http://127.0.0.1:{port}"
    ok = asyncio.run(gateway_level(url, b"jpeg", 3, 0.3, 0.05, timings=True, client=client))
    assert ok["errors"] == 0 and len(ok["latencies"]) > 10
    assert ok["timings_ms"] == [{"total": 1.5}] * len(ok["latencies"])
    assert ok["images_per_s"] > 0
    refused = asyncio.run(gateway_level(url, b"jpeg", 2, 0.2, 0.0, path="/refuse",
                                        client=client))
    assert refused["latencies"] == [] and refused["errors"] > 0


def test_an_unknown_client_is_refused():
    with pytest.raises(ValueError, match="keepalive"):
        asyncio.run(gateway_level("http://127.0.0.1:1", b"", 1, 0.1, 0.0, client="curl"))
