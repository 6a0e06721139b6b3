"""Child processes that start together and stop together, leaving no orphans.

Each child gets its own session (process group), so Ctrl-C reaches only the CLI, which then
stops the children in reverse start order: SIGTERM to the whole group (Triton's python-backend
stubs included), SIGKILL for whatever is left after a grace period.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def wait(self, poll_s: float = 0.5) -> Child:
        """Block until a child exits (or KeyboardInterrupt); return it."""
        while True:
            child = self.exited()
            if child is not None:
                return child
            time.sleep(poll_s)

    def stop(self, grace_s: float = 15.0) -> None:
        for child in reversed(self.children):
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(child.proc, signal.SIGKILL)  # the group may outlive its leader
            child.proc.wait()
        self.children.clear()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGTERM if the supervising process dies,
    even by SIGKILL, which no handler of ours could catch (Linux PR_SET_PDEATHSIG)."""
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_http_ok(url: str, proc: subprocess.Popen | None, timeout_s: float,
                 what: str = "service") -> None:
    """Poll `url` until it answers 200; raise RuntimeError if `proc` exits, TimeoutError after
    `timeout_s`."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{what} not ready at {url} after {timeout_s:.0f}s")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
