"""The release audit log: who did what to which model version, when, and what the gates said.

One JSON object per line in `<runtime_dir>/audit.jsonl`, appended under an exclusive lock so the
CLI and the API server can write at once. Each entry is also logged (event `audit`), so it
reaches the JSON logs and the log index.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("visionguard.audit")


def local_actor() -> str:
    """The operator running the CLI on this machine."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def record(self, actor: str, action: str, *, model: str, version: str | None = None,
               outcome: str = "ok", **details) -> dict:
        entry = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "actor": actor, "action": action, "model": model,
            "version": None if version is None else str(version), "outcome": outcome,
            **details,
        }
        line = json.dumps(entry, default=str, sort_keys=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(line + "\n")
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        level = logging.WARNING if outcome not in ("ok", "started") else logging.INFO
        log.log(level, "%s %s version %s: %s", actor, action, version, outcome,
                extra={"event": "audit", "action": action, "model": model,
                       "model_version": entry["version"], "outcome": outcome,
                       **{k: v for k, v in details.items() if k in ("reason", "step")}})
        return entry

    def entries(self, limit: int = 100, since_s: float | None = None) -> list[dict]:
        """The last `limit` entries, oldest first."""
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        out = []
        for line in lines[-limit:]:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line from a crash mid-write: skip it, keep the rest
        if since_s is not None:
            cutoff = time.time() - since_s
            out = [e for e in out
                   if datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                   >= cutoff]
        return out
