"""The routing contract: which model version answers a request, as one typed value.

The control plane computes a `Routing` from its registry (the champion and challenger aliases,
the canary share) and serves `as_dict()` at `GET /v1/routing`; every gateway polls it
(routing_follower.py) and asks `choose` once per request. Both sides build this one struct, so
the JSON fields, the revision both report and the canary assignment are defined once, here.

Requests name the version explicitly to Triton (the champion, or the challenger for a canary's
share), never Triton's default, so a candidate being checked in Triton gets no traffic. Canary
assignment is sticky per stream (a hash of the stream id), so a stream's tracks never jump between
models; a stateless /v1/detect request is assigned at random with the same share.

Standard library and msgspec only: the control plane imports it without the gateway's runtime.
"""

from __future__ import annotations

import hashlib
import random
import zlib

import msgspec

# Why a request went to its version (the `role` label of the routed-requests counter).
CHAMPION, CHALLENGER, EXPLICIT, DEFAULT = "champion", "challenger", "explicit", "default"


class Routing(msgspec.Struct, frozen=True):
    """What the gateways serve: the champion, and the challenger's share of streams."""

    model: str = ""
    champion: str | None = None
    challenger: str | None = None
    canary_percent: float = 0.0

    @property
    def revision(self) -> str:
        """A short hash of what serves (not of the model name): equal routings, equal revisions."""
        key = f"{self.champion}|{self.challenger}|{self.canary_percent:g}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]

    def as_dict(self) -> dict:
        return {"model": self.model, "champion": self.champion, "challenger": self.challenger,
                "canary_percent": self.canary_percent, "revision": self.revision}

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
