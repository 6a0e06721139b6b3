"""Which model version answers a request: the control plane's routing, followed by every replica.

Each gateway polls `GET /v1/routing` on the control plane (every `routing_poll_s`) and keeps the
last answer, so a control-plane outage changes nothing that serves. Requests name the version
explicitly to Triton (the champion, or the challenger for a canary's share), never Triton's
default, so a candidate being checked in Triton gets no traffic. Canary assignment is sticky per
stream (a hash of the stream id), so a stream's tracks never jump between models; a stateless
/v1/detect request is assigned at random with the same share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import zlib
from dataclasses import dataclass

import httpx

from tracker_service.settings import GatewaySettings

log = logging.getLogger("visionguard.routing")

CHAMPION, CHALLENGER, EXPLICIT, DEFAULT = "champion", "challenger", "explicit", "default"


@dataclass(frozen=True)
class RoutingTable:
    champion: str | None = None
    challenger: str | None = None
    canary_percent: float = 0.0
    revision: str = ""

    def choose(self, stream_id: str | None, draw: float | None = None) -> tuple[str, str]:
        """(version, role) for one request; version "" means Triton's default."""
        if self.challenger and self.canary_percent > 0:
            if stream_id is not None:
                bucket = zlib.crc32(stream_id.encode()) % 10_000 / 100  # [0, 100)
            else:
                bucket = (random.random() if draw is None else draw) * 100
            if bucket < self.canary_percent:
                return self.challenger, CHALLENGER
        if self.champion:
            return self.champion, CHAMPION
        return "", DEFAULT


class RoutingFollower:
    def __init__(self, settings: GatewaySettings, metrics=None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.table = RoutingTable()
        self.enabled = bool(settings.control_url)
        self._client = httpx.AsyncClient(
            base_url=settings.control_url.rstrip("/"), timeout=2.0,
            headers={"authorization": f"Bearer {settings.control_token}",
                     "x-gateway-id": f"{socket.gethostname()}:{os.getpid()}"}) \
            if self.enabled else None
        self._task: asyncio.Task | None = None

    def choose(self, requested: str, stream_id: str | None) -> tuple[str, str]:
        """The client's explicit version wins; otherwise the routing decides."""
        if requested:
            return requested, EXPLICIT
        return self.table.choose(stream_id)

    async def refresh(self) -> bool:
        if self._client is None:
            return False
        try:
            response = await self._client.get("/v1/routing")
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            if self.metrics is not None:
                self.metrics.routing_errors.inc()
            log.warning("routing fetch failed; keeping revision %s: %s", self.table.revision,
                        exc, extra={"event": "routing_fetch_failed"})
            return False
        table = RoutingTable(body.get("champion"), body.get("challenger"),
                             float(body.get("canary_percent") or 0.0), body.get("revision", ""))
        if table != self.table:
            log.info("routing revision %s: champion %s, challenger %s at %g%%", table.revision,
                     table.champion, table.challenger, table.canary_percent,
                     extra={"event": "routing_changed", "model_version": table.champion})
            if self.metrics is not None:
                self.metrics.routing_info.clear()
                self.metrics.routing_info.labels(table.champion or "", table.challenger or "",
                                                 f"{table.canary_percent:g}").set(1)
        self.table = table
        return True

    async def _follow(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.settings.routing_poll_s)

    async def start(self) -> None:
        if self._client is not None:
            await self.refresh()  # serve the control plane's choice from the first request
            self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            await self._client.aclose()
