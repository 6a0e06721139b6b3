"""Every gateway replica follows the control plane's routing by polling it.

Each gateway fetches `GET /v1/routing` (every `routing_poll_s`) into a `routing.Routing` and keeps
the last good answer, so a control-plane outage changes nothing that serves: a failed fetch is
counted and logged, and the previous routing stays. The contract itself (fields, revision, canary
assignment) lives in routing.py, shared with the control plane.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import httpx
import msgspec

from tracker_service.routing import EXPLICIT, Routing
from tracker_service.settings import GatewaySettings
from tracker_service.tasks import stop_task

log = logging.getLogger("visionguard.routing")


class RoutingFollower:
    def __init__(self, settings: GatewaySettings, metrics=None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current = Routing()
        self.enabled = bool(settings.control_url)
        self._client = httpx.AsyncClient(
            base_url=settings.control_url.rstrip("/"), timeout=2.0, transport=transport,
            headers={"authorization": f"Bearer {settings.control_token}",
                     "x-gateway-id": f"{socket.gethostname()}:{os.getpid()}"}) \
            if self.enabled else None
        self._task: asyncio.Task | None = None

    def choose(self, requested: str, stream_id: str | None) -> tuple[str, str]:
        """The client's explicit version wins; otherwise the routing decides."""
        if requested:
            return requested, EXPLICIT
        return self.current.choose(stream_id)

    async def refresh(self) -> bool:
        if self._client is None:
            return False
        try:
            response = await self._client.get("/v1/routing")
            response.raise_for_status()
            routing = msgspec.json.decode(response.content, type=Routing)
        except (httpx.HTTPError, msgspec.DecodeError) as exc:
            if self.metrics is not None:
                self.metrics.routing_errors.inc()
            log.warning("routing fetch failed; keeping revision %s: %s", self.current.revision,
                        exc, extra={"event": "routing_fetch_failed"})
            return False
        if routing != self.current:
            log.info("routing revision %s: champion %s, challenger %s at %g%%, shadow %s at "
                     "%g%%", routing.revision, routing.champion, routing.challenger,
                     routing.canary_percent, routing.shadow, routing.shadow_percent,
                     extra={"event": "routing_changed", "model_version": routing.champion})
            if self.metrics is not None:
                self.metrics.routing_info.clear()
                self.metrics.routing_info.labels(routing.champion or "", routing.challenger or "",
                                                 f"{routing.canary_percent:g}").set(1)
        self.current = routing
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
        await stop_task(self._task)
        self._task = None
        if self._client is not None:
            await self._client.aclose()
