"""Bearer tokens with roles for the control plane's HTTP API.

Tokens live in a JSON file named by configuration (`VG_TOKENS_FILE`, default
`<runtime_dir>/tokens.json`), stored as SHA-256 digests, never in the clear:

    {"tokens": [{"name": "alice", "sha256": "<hex>", "roles": ["release"]}]}

`visionguard tokens create --name alice --role release` adds one and prints the token once.

Roles: `release` may change what serves (register, promote, canary, rollback); `sre` may query
logs; `gateway` is what gateways present to fetch routing and send drift features. Every valid
token may read (list, show, compare, routing, audit).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

ROLES = ("release", "sre", "gateway", "viewer")
# People's roles: each may read the state of the releases, drift and models. A gateway's token
# reads only what a gateway needs (the routing, the drift status) and posts drift features, so
# a leaked gateway token does not open the console or the registry.
READERS = ("viewer", "release", "sre")


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The token file, re-read when it changes (adding a token needs no restart)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._by_digest: dict[str, Principal] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._by_digest, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        entries = json.loads(self.path.read_text()).get("tokens", [])
        self._by_digest = {e["sha256"]: Principal(e["name"], frozenset(e["roles"]))
                           for e in entries}
        self._mtime = mtime

    def authenticate(self, token: str) -> Principal | None:
        self._load()
        wanted = digest(token)
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, wanted):
                return principal
        return None

    def create(self, name: str, roles: list[str]) -> str:
        """Add a token for `name` with `roles`; returns the token (shown once)."""
        unknown = set(roles) - set(ROLES)
        if unknown or not roles:
            raise ValueError(f"roles must be among {', '.join(ROLES)}; got {roles}")
        token = f"vg_{secrets.token_urlsafe(24)}"
        data = {"tokens": []}
        if self.path.exists():
            data = json.loads(self.path.read_text())
        data["tokens"] = [e for e in data["tokens"] if e["name"] != name]
        data["tokens"].append({"name": name, "sha256": digest(token), "roles": sorted(roles)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        return token


def bearer(connection: ASGIConnection) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("missing bearer token (Authorization: Bearer <token>)")
    return token.strip()


def principal_of(connection: ASGIConnection) -> Principal:
    """The caller, or 401. Cached on the connection's state for the handler to read."""
    cached = connection.state.get("principal")
    if cached is not None:
        return cached
    store: TokenStore = connection.app.state.tokens
    principal = store.authenticate(bearer(connection))
    if principal is None:
        raise NotAuthorizedException("unknown or revoked token")
    connection.state.principal = principal
    return principal


def requires(*roles: str):
    """A Litestar guard: a token that carries one of `roles`; without roles, a person's token
    (READERS: viewer, release or sre), which is what reads need."""
    wanted = frozenset(roles or READERS)
    unknown = wanted - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}")

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        principal = principal_of(connection)
        if not wanted & principal.roles:
            need = " or ".join(repr(r) for r in sorted(wanted))
            raise PermissionDeniedException(
                f"this call needs the {need} role; token {principal.name!r} has "
                f"{sorted(principal.roles)}")

    guard.__name__ = "requires_" + "_".join(sorted(roles)) if roles else "requires_reader"
    return guard
