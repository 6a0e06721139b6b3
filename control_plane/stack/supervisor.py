"""Child processes that start together, are restarted when they die, and stop together.

Each child gets its own session (process group), so Ctrl-C reaches only the CLI, which then
stops the children in reverse start order: SIGTERM to the whole group (Triton's python-backend
stubs included), SIGKILL for whatever is left after a grace period. A child also dies with the
supervising process, even when that is SIGKILLed (PR_SET_PDEATHSIG).

With a `RestartPolicy` and `watch()`, a child that exits on its own is started again, alone: a
dependent keeps running (the gateway answers 503 with Retry-After while Triton is away and
reconnects; it keeps its last routing while the control plane is away). Restarts back off
exponentially (1, 2, 4 ... 30 s); a child that exits more than `max_restarts` times within
`window_s` is a failure the supervisor gives up on, and `wait()` returns why. Each exit and
restart is a JSON log event (`child_exited`, `child_restarted`, `child_failed`) and is kept in
the state file (`StatusFile`), which the gateway's /readyz and metrics read.

Why a small supervisor of our own rather than supervisord, honcho or systemd units: `up` is one
foreground command on a developer's machine or a CI runner (no root, no init system, no extra
daemon to install or configure); it decides the start order across a long first-run step (the
bootstrap training runs between starting the control plane and starting Triton); its children
must die with it even when it is SIGKILLed (none of the three does that for a foreground run);
and the restart events go into our own JSON logs and state file. honcho restarts nothing (one
exit stops all, the behaviour issue 16 reported); supervisord would restart, but as a daemon with
an INI file and an XML-RPC control socket for a job of ~150 lines here. In Kubernetes the kubelet
does this job (restartPolicy Always, probes): see k8s/README.md.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("visionguard.supervisor")

Command = list[str] | Callable[[], list[str]]  # a callable is asked again at each (re)start


@dataclass(frozen=True)
class RestartPolicy:
    """How a child that exits on its own is started again."""

    backoff_s: float = 1.0  # delay before the first restart; doubled for each recent one
    max_backoff_s: float = 30.0
    max_restarts: int = 5  # restarts within `window_s`; the next exit stops the stack
    window_s: float = 300.0

    def delay(self, recent_restarts: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** recent_restarts)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    command: Command = field(default_factory=list)
    env: dict[str, str] | None = None
    restarts: deque[float] = field(default_factory=deque)  # monotonic times, within the window
    restarts_total: int = 0
    last_exit: int | None = None
    restart_at: float | None = None  # set while it waits out its backoff
    on_exit: Callable[[Child], None] | None = None  # cleanup after an exit (before a restart)


def describe_exit(code: int | None) -> str:
    """A returncode as words that follow a child's name: "triton was killed by SIGKILL"."""
    if code is None:
        return "is running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class StatusFile:
    """`<runtime_dir>/status.json`: what `up` is doing (phase, a reason a person can read) and
    each child's state and restarts. Rewritten whole, atomically (temp file + rename), on every
    change; readers (the gateway's /readyz) never see half a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict = {"pid": os.getpid(), "phase": "starting", "ready": False,
                            "reason": "starting", "children": {}}

    def update(self, **fields) -> None:
        with self._lock:
            self._data.update(fields)
            self._write()

    def child(self, name: str, **fields) -> None:
        with self._lock:
            self._data["children"].setdefault(name, {}).update(fields)
            self._write()

    def snapshot(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._data))

    def _write(self) -> None:
        self._data["updated_at"] = round(time.time(), 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".status-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._data, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class Supervisor:
    def __init__(self, log_dir: Path, policy: RestartPolicy | None = None,
                 status: StatusFile | None = None, poll_s: float = 0.1,
                 on_give_up: Callable[[str], None] | None = None) -> None:
        self.log_dir = log_dir
        self.policy = policy
        self.status = status
        self.poll_s = poll_s
        self.on_give_up = on_give_up  # called once, from the watcher thread
        self.children: list[Child] = []
        self.failure: str | None = None  # why the supervisor gave up (set once)
        self._lock = threading.RLock()
        self._gave_up = threading.Event()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- starting ---------------------------------------------------------------------------

    def start(self, name: str, cmd: Command, env: dict[str, str] | None = None,
              on_exit: Callable[[Child], None] | None = None) -> Child:
        """Start `cmd` (a list, or a callable giving the list at each start) as `name`."""
        with self._lock:
            child = Child(name, self._spawn(name, cmd, env), self.log_dir / f"{name}.log",
                          cmd, env, on_exit=on_exit)
            self.children.append(child)
            self._record(child, state="running")
            return child

    def _spawn(self, name: str, cmd: Command, env: dict[str, str] | None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = cmd() if callable(cmd) else cmd
        with open(self.log_dir / f"{name}.log", "ab") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent)

    # --- watching ---------------------------------------------------------------------------

    def watch(self) -> None:
        """Restart children that exit, in a background thread, until `stop()` or a child fails
        too often. Needs a RestartPolicy."""
        if self.policy is None:
            raise ValueError("watch() needs a RestartPolicy")
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="supervisor",
                                             daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        # The children restarted here get PR_SET_PDEATHSIG from this thread: the kernel
        # signals them when the *thread* that forked them ends. It ends only when the stack
        # stops (stop() or a failure), when they are being stopped anyway.
        while not self._stopping.is_set():
            try:
                with self._lock:
                    for child in list(self.children):
                        self._tend(child)
            except Exception as exc:  # a bug here must stop the stack, not orphan it
                log.exception("supervisor error", extra={"event": "supervisor_error"})
                self._give_up(f"the supervisor failed: {type(exc).__name__}: {exc}")
            if self._gave_up.is_set():
                return
            self._stopping.wait(self.poll_s)

    def _tend(self, child: Child) -> None:
        assert self.policy is not None
        now = time.monotonic()
        if child.restart_at is None:
            code = child.proc.poll()
            if code is None:
                return
            child.last_exit = code
            _signal_group(child.proc, signal.SIGKILL)  # what its group left behind
            if child.on_exit is not None:
                child.on_exit(child)
            while child.restarts and now - child.restarts[0] > self.policy.window_s:
                child.restarts.popleft()
            if len(child.restarts) >= self.policy.max_restarts:
                reason = (f"{child.name} {describe_exit(code)}: {len(child.restarts) + 1} exits "
                          f"within {self.policy.window_s:.0f} s, more than the "
                          f"{self.policy.max_restarts} restarts allowed; see {child.log_path}")
                log.error("%s", reason, extra={
                    "event": "child_failed", "child": child.name, "exit_code": code,
                    "restarts_in_window": len(child.restarts), "log": str(child.log_path)})
                self._record(child, state="failed", last_exit_code=code)
                self._give_up(reason)
                return
            delay = self.policy.delay(len(child.restarts))
            child.restart_at = now + delay
            log.warning("%s %s; restarting in %g s", child.name, describe_exit(code), delay,
                        extra={"event": "child_exited", "child": child.name, "exit_code": code,
                               "pid": child.proc.pid, "restart_in_s": delay})
            self._record(child, state="restarting", last_exit_code=code,
                         restart_at=round(time.time() + delay, 3))
        elif now >= child.restart_at:
            child.restarts.append(now)
            child.restarts_total += 1
            delay = self.policy.delay(len(child.restarts) - 1)
            child.proc = self._spawn(child.name, child.command, child.env)
            child.restart_at = None
            log.warning("%s restarted (restart %d in the last %.0f s; it %s)", child.name,
                        len(child.restarts), self.policy.window_s,
                        describe_exit(child.last_exit),
                        extra={"event": "child_restarted", "child": child.name,
                               "exit_code": child.last_exit, "attempt": len(child.restarts),
                               "restarts_total": child.restarts_total, "backoff_s": delay,
                               "pid": child.proc.pid})
            self._record(child, state="running", restart_at=None)

    def _give_up(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            if self.on_give_up is not None:
                self.on_give_up(reason)
        self._gave_up.set()

    def wait(self, poll_s: float = 0.5) -> str:
        """Block until the supervisor gives up on a child (KeyboardInterrupt passes through);
        return why. Without watch(): until a child exits."""
        while not self._gave_up.wait(poll_s):
            if self._watcher is None:
                child = self.exited()
                if child is not None:
                    self._give_up(f"{child.name} {describe_exit(child.proc.returncode)}")
        return self.failure or "stopped"

    def exited(self) -> Child | None:
        with self._lock:
            return next((c for c in self.children if c.proc.poll() is not None), None)

    def _record(self, child: Child, **fields) -> None:
        if self.status is not None:
            self.status.child(child.name, pid=child.proc.pid, restarts=child.restarts_total,
                              last_exit=describe_exit(child.last_exit)
                              if child.last_exit is not None else None, **fields)

    # --- stopping ---------------------------------------------------------------------------

    def stop(self, grace_s: float = 15.0) -> None:
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=10)
        with self._lock:
            for child in reversed(self.children):
                _signal_group(child.proc, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for child in reversed(self.children):
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %g s of SIGTERM; killing it", child.name,
                                grace_s, extra={"event": "child_killed", "child": child.name,
                                                "grace_s": grace_s})
                _signal_group(child.proc, signal.SIGKILL)  # the group may outlive its leader
                child.proc.wait()
                if child.on_exit is not None:
                    child.on_exit(child)
                self._record(child, state="stopped")
            self.children.clear()
        self._watcher = None
        self._stopping.clear()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# Loaded once in the parent: the child calls prctl between fork and exec, where loading a
# library (dlopen's lock, possibly held by another thread at fork) could deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGTERM if the supervising process dies,
    even by SIGKILL, which no handler of ours could catch (Linux PR_SET_PDEATHSIG)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
