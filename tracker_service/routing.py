"""The routing contract: which model version answers a request, as one typed value.

The control plane computes a `Routing` from its registry (the champion and challenger aliases,
the canary share) and serves `as_dict()` at `GET /v1/routing`; every gateway polls it
(routing_follower.py) and asks `choose` once per request. Both sides build this one struct, so
the JSON fields, the revision both report and the canary assignment are defined once, here.

Requests name the version explicitly to Triton (the champion, or the challenger for a canary's
share), never Triton's default, so a candidate being checked in Triton gets no traffic. Canary
assignment is sticky per stream (a hash of the stream id), so a stream's tracks never jump between
models; a stateless /v1/detect request is assigned at random with the same share.

A shadow version (issue 15) serves nobody: `shadow_percent`% of the champion's requests are
mirrored to it in the background and the two answers compared (tracker_service/shadow.py). The
draw is per request, streams included: a shadow keeps no tracker state, so nothing has to stick.

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
    shadow: str | None = None
    shadow_percent: float = 0.0

    @property
    def revision(self) -> str:
        """A short hash of what serves (not of the model name): equal routings, equal revisions.
        A routing without a shadow hashes as it did before shadows existed."""
        key = f"{self.champion}|{self.challenger}|{self.canary_percent:g}"
        if self.shadow:
            key += f"|shadow:{self.shadow}|{self.shadow_percent:g}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]

    def as_dict(self) -> dict:
        return {"model": self.model, "champion": self.champion, "challenger": self.challenger,
                "canary_percent": self.canary_percent, "shadow": self.shadow,
                "shadow_percent": self.shadow_percent, "revision": self.revision}

    def mirror_to(self, answered_by: str, draw: float | None = None) -> str | None:
        """The shadow version a request answered by `answered_by` is mirrored to, or None: only
        the champion's answers are mirrored, to a shadow that is not the champion, at
        `shadow_percent`% of them."""
        if not self.shadow or self.shadow_percent <= 0 or self.shadow == answered_by \
                or answered_by != self.champion:
            return None
        return self.shadow if (random.random() if draw is None else draw) * 100 \
            < self.shadow_percent else None

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
