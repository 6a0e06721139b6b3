"""Settings fields read from the environment: the one helper both services' settings use.

`env("VG_X", 8)` declares a dataclass field whose value is read from `VG_X` each time a settings
object is built, typed like its default (bool: 1/true/yes). Both `GatewaySettings` and the control
plane's `Settings` are built once per process from these fields; nothing else reads os.environ.
"""

from __future__ import annotations

import os
from dataclasses import field
from typing import Any


def env(name: str, default: Any, *fallbacks: str) -> Any:
    """A dataclass field read from `name` (then each of `fallbacks`), else `default`."""
    kind = type(default)

    def read() -> Any:
        raw = next((os.environ[n] for n in (name, *fallbacks) if os.environ.get(n)), None)
        if raw is None:
            return default
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes")
        return kind(raw)

    return field(default_factory=read)
