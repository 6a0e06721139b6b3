"""Faults on the real stack: each child of `visionguard up` is killed with SIGKILL under load.

One `up` serves a registered champion and a challenger in canary (so Triton serves two
versions and gateways follow a routing that names both). Four clients post images to the
gateway the whole time, each waiting 20 ms between requests (bounded load on localhost); each
child in turn (Triton, the control plane, the gateway, the MLflow UI) is killed with SIGKILL,
and the test waits until the stack serves again.

What it asserts are outcomes, with generous deadlines: the supervisor restarts the killed child
alone and logs it; while Triton is away clients get 503 with Retry-After from a gateway that
never refuses a connection, and 200 again once it is back, from the same versions; while the
control plane is away the gateway keeps serving its last routing (both versions); the drift
window survives a control-plane restart and stays bounded; the MLflow registry, the aliases,
the audit log, the routing and the model repository are the same at the end. The timings
(time to the first 503, time back to 200) are measured, printed and written to
`fault-figures.json` in the test's directory for the record; they are not asserted (a loaded
CI machine must not fail a test for being slow).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import run_up, settings_from, stack_env
from tests.test_canary_analysis import register_like

pytestmark = pytest.mark.integration

CLIENTS = 4
PAUSE_S = 0.02  # between one client's requests
RECOVERY_DEADLINE_S = 120  # generous: a loaded 2-core machine restarts Triton in ~5 s
DRIFT_WINDOW = 64


@dataclass
class Outcome:
    sent: float
    done: float
    status: int | None  # None: no HTTP answer
    error: str = ""  # "connect" (connection refused), "transport" (cut mid-request)
    retry_after: str | None = None
    code: str = ""  # the JSON error code of a non-200 answer
    version: str = ""  # the model version that answered a 200


@dataclass
class Load:
    """CLIENTS threads posting `image` to the gateway until stopped; every outcome kept."""

    url: str
    image: bytes
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post("/v1/detect", content=self.image,
                                    headers={"content-type": "image/jpeg"})
                    body = r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else {}
                    outcome = Outcome(sent, time.monotonic(), r.status_code,
                                      retry_after=r.headers.get("retry-after"),
                                      code=(body.get("error") or {}).get("code", ""),
                                      version=(body.get("model") or {}).get("version", ""))
                except httpx.ConnectError:
                    outcome = Outcome(sent, time.monotonic(), None, "connect")
                except httpx.TransportError as exc:
                    outcome = Outcome(sent, time.monotonic(), None,
                                      f"transport: {type(exc).__name__}")
                with self._lock:
                    self.outcomes.append(outcome)
                time.sleep(PAUSE_S if outcome.status == 200 else 0.1)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(CLIENTS)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def since(self, t0: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.sent >= t0 or o.done >= t0]

    def ok_after(self, t0: float, n: int = 5) -> bool:
        """`n` requests sent after `t0` answered 200."""
        with self._lock:
            return sum(1 for o in self.outcomes if o.sent >= t0 and o.status == 200) >= n


@dataclass
class Faulted:
    settings: object
    stack: object
    registry: object
    control_headers: dict[str, str]
    versions: tuple[str, str]  # champion, challenger


@pytest.fixture(scope="module")
def faulted(trained_checkpoint, tmp_path_factory):
    from control_plane.auth import TokenStore
    from control_plane.releases.promoter import Promoter
    from control_plane.releases.registry import Registry
    from control_plane.datasets.synthetic_data import generate_dataset

    root = tmp_path_factory.mktemp("faults")
    # Nothing here reads the versions' accuracy: a small evaluation set is enough to register.
    eval_data = generate_dataset(root / "eval", n_train=0, n_val=12, imgsz=256, seed=7)
    env = {**stack_env(root / "repo", root / "runtime", mlflow_ui=True),
           "VG_GATEWAY_ROUTING_POLL_S": "0.5", "VG_ROUTING_DRAIN_S": "1.5",
           "VG_DRIFT_WINDOW": str(DRIFT_WINDOW), "VG_GATEWAY_DRIFT_SAMPLE_RATE": "1",
           "VG_GATEWAY_DRIFT_FLUSH_S": "1",
           # The first restart's delay (1 s by default) is waited out five times here; the
           # backoff itself is tested in tests/test_processes.py.
           "VG_RESTART_BACKOFF_S": "0.2"}
    del env["VG_MODEL_REPOSITORY"]  # the live repository in the runtime directory
    settings = replace(settings_from(env), routing_drain_s=1.5)
    registry = Registry(settings)
    registered = registry.register(trained_checkpoint, actor="test", eval_data=eval_data)
    champion = registered.version
    # The challenger: the champion's registered ONNX as a version of its own, with its tags
    # (tests/test_canary_analysis.py's register_like), which saves a second evaluation and
    # ONNX export of the same checkpoint (7 s of a run on a loaded 2-core machine).
    challenger = register_like(registry, champion, registry.download(
        registered, "model/model.onnx", tmp_path_factory.mktemp("challenger")),
        "faults-challenger")
    with run_up(env, root / "up.log") as stack:
        token = TokenStore(settings.tokens_file).create("test-faults", ["release", "viewer"])
        # Each registry write of the canary's start leaves a routing gateways may read: none
        # may name the challenger at a share other than the one asked for.
        seen = []
        for write in ("set_alias", "set_canary_percent"):
            def recorded(*args, _write=getattr(registry, write), **kwargs):
                _write(*args, **kwargs)
                routing = registry.routing()
                seen.append((routing.challenger, routing.canary_percent))
            setattr(registry, write, recorded)
        Promoter(settings, actor="test", registry=registry).canary(challenger, 50)
        for write in ("set_alias", "set_canary_percent"):
            delattr(registry, write)
        assert seen[-1] == (challenger, 50)
        assert all(state in ((None, 0.0), (challenger, 50)) for state in seen), seen
        faulted = Faulted(settings, stack, registry, {"authorization": f"Bearer {token}"},
                          (champion, challenger))
        # The control plane caches the routing for a moment: wait until it serves the canary,
        # its share included (the state the test keeps and checks at the end).
        wait_for(lambda: (lambda r: (r["challenger"], r["canary_percent"]) == (challenger, 50))(
            httpx.get(f"{settings.control_url}/v1/routing", headers=faulted.control_headers,
                      timeout=10).json()), "the canary's routing")
        yield faulted


# --- what must survive ------------------------------------------------------------------------

def repository_digest(repo: Path) -> dict[str, str]:
    """Every file of the live model repository and its sha256 (the python backend's
    __pycache__ aside: Triton's stub writes it, see triton_server.server_environment)."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def registry_state(registry) -> dict:
    client, name = registry.client, registry.name
    model = client.get_registered_model(name)
    return {"aliases": dict(model.aliases), "tags": dict(model.tags),
            "versions": {v.version: (v.run_id, v.source, dict(v.tags))
                         for v in client.search_model_versions(f"name='{name}'")}}


def durable_state(f: Faulted) -> dict:
    s = f.settings
    routing = httpx.get(f"{s.control_url}/v1/routing", headers=f.control_headers, timeout=10)
    routing.raise_for_status()
    return {"registry": registry_state(f.registry), "routing": routing.json(),
            "repository": repository_digest(s.model_repository),
            "audit": s.audit_file.read_text()}


# --- the faults -------------------------------------------------------------------------------

def status(settings) -> dict:
    return json.loads((settings.runtime_dir / "status.json").read_text())


def child_pid(settings, name: str) -> int:
    return status(settings)["children"][name]["pid"]


def wait_for(predicate, what: str, timeout_s: float = RECOVERY_DEADLINE_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def readiness_poller(url: str, stop: threading.Event, seen: list[dict]) -> None:
    while not stop.is_set():
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            seen.append({**r.json(), "http": r.status_code})
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)


def kill_under_load(f: Faulted, load: Load, name: str, back: str) -> dict:
    """SIGKILL child `name` while `load` runs; wait until it runs again (a new pid) and the URL
    `back` answers 200 and clients get 200 again; return the outcomes and figures."""
    s = f.settings
    wait_for(lambda: load.ok_after(time.monotonic() - 1.0), "steady 200s before the kill")
    pid = child_pid(s, name)
    assert psutil.Process(pid).is_running()
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: child_pid(s, name) != pid
             and status(s)["children"][name]["state"] == "running", f"{name} restarted")
    wait_for(lambda: answers(back), f"{back} answers again")
    t_back = time.monotonic()
    wait_for(lambda: load.ok_after(t_back), "clients get 200 again")
    time.sleep(1.0)
    during = load.since(t_kill)
    failed = [o for o in during if o.status != 200]
    first_503 = min((o.done for o in during if o.status == 503), default=None)
    last_failure = max((o.done for o in failed), default=None)
    first_ok_after = min((o.done for o in during if o.status == 200
                          and last_failure is not None and o.done > last_failure), default=None)
    figures = {
        "child": name,
        "requests": len(during),
        "ok": sum(o.status == 200 for o in during),
        "503": sum(o.status == 503 for o in during),
        "other_status": sorted({o.status for o in during} - {200, 503, None}),
        "connection_errors": sum(o.error == "connect" for o in during),
        "transport_errors": sum(o.error.startswith("transport") for o in during),
        "first_503_s": round(first_503 - t_kill, 3) if first_503 else None,
        "back_to_200_s": round(first_ok_after - t_kill, 3) if first_ok_after else 0.0,
        "restarted_s": round(t_back - t_kill, 3),
    }
    return {"figures": figures, "outcomes": during, "t_kill": t_kill, "old_pid": pid}


def metric(url: str, name: str) -> float:
    """One unlabelled sample of a Prometheus scrape of `url`/metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def restart_events(settings) -> list[dict]:
    lines = (settings.runtime_dir / "logs" / "up.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == "child_restarted"]


def triton_serves(settings, versions) -> bool:
    return all(answers(f"{settings.triton_http_url}/v2/models/detector/versions/{v}/ready")
               for v in versions)


def drift_window(f: Faulted) -> int:
    r = httpx.get(f"{f.settings.control_url}/v1/drift/status", headers=f.control_headers,
                  timeout=10)
    r.raise_for_status()
    return r.json()["window"]


def test_every_child_killed_under_load_comes_back_and_nothing_is_lost(faulted, shapes_images,
                                                                     tmp_path):
    f, s = faulted, faulted.settings
    gateway = f.stack.gateway_url
    before = durable_state(f)
    assert before["routing"]["champion"] == f.versions[0]
    assert before["routing"]["challenger"] == f.versions[1]
    assert triton_serves(s, f.versions)
    figures = []
    with Load(gateway, shapes_images[0].read_bytes()) as load:
        # Triton: the gateway answers 503 + Retry-After meanwhile, never refuses a connection.
        stop, seen = threading.Event(), []
        poller = threading.Thread(target=readiness_poller, args=(gateway, stop, seen))
        poller.start()
        try:
            triton = kill_under_load(f, load, "triton",
                                     f"{s.triton_http_url}/v2/models/detector/ready")
        finally:
            stop.set()
            poller.join()
        figures.append(triton["figures"])
        outcomes = triton["outcomes"]
        assert not [o for o in outcomes if o.status is None], "the gateway refused or cut"
        assert {o.status for o in outcomes} <= {200, 503}
        unavailable = [o for o in outcomes if o.status == 503]
        assert unavailable, "Triton's absence went unnoticed"
        assert all(o.code == "triton_unavailable" and int(o.retry_after) >= 1
                   for o in unavailable)
        assert any(r["http"] == 503 and "Triton" in r.get("reason", "") for r in seen), seen
        assert triton_serves(s, f.versions), "the restarted Triton lost a served version"
        # Both versions answer again: the routing's champion and challenger.
        wait_for(lambda: {o.version for o in load.since(time.monotonic() - 2)
                          if o.status == 200} == set(f.versions), "both versions answer")

        # The control plane: the gateway serves on with the routing it had.
        control = kill_under_load(f, load, "control-plane", f"{s.control_url}/healthz")
        figures.append(control["figures"])
        assert {o.status for o in control["outcomes"]} == {200}
        assert {o.version for o in control["outcomes"]} == set(f.versions)

        # The gateway: clients cannot connect until it is back (nothing else answers there).
        gw = kill_under_load(f, load, "gateway", f"{gateway}/readyz")
        figures.append(gw["figures"])
        assert {o.status for o in gw["outcomes"]} <= {200, None}
        # Its image regions in shared memory were released: Triton holds only the new ones.
        regions = httpx.get(f"{s.triton_http_url}/v2/systemsharedmemory/status").json()
        assert regions and not [r for r in regions
                                if r["name"].startswith(f"vg_{gw['old_pid']}_")]

        # The MLflow UI: nothing that serves depends on it.
        ui = kill_under_load(f, load, "mlflow", f"http://127.0.0.1:{s.mlflow_ui_port}/health")
        figures.append(ui["figures"])
        assert {o.status for o in ui["outcomes"]} == {200}

    # The drift window survives a control-plane restart, bounded. No load now, and the
    # gateway holds no sample back, so whatever the restarted control plane holds was read back
    # from disk (it has received nothing itself).
    window = wait_for(lambda: (lambda w: w if w == DRIFT_WINDOW else None)(drift_window(f)),
                      "the drift window fills")
    wait_for(lambda: metric(gateway, "visionguard_gateway_drift_buffer_samples") == 0,
             "the gateway's drift samples all sent")
    pid = child_pid(s, "control-plane")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: child_pid(s, "control-plane") != pid and answers(f"{s.control_url}/healthz"),
             "the control plane restarts")
    assert metric(s.control_url, "visionguard_drift_features_received_total") == 0
    assert drift_window(f) == window == DRIFT_WINDOW

    restarted = {e["child"]: e for e in restart_events(s)}
    for name in ("triton", "control-plane", "gateway", "mlflow"):
        assert restarted[name]["exit_code"] == -signal.SIGKILL
        assert restarted[name]["attempt"] >= 1
    # ... and as a metric: the control plane exports the supervisor's restart counts.
    scrape = httpx.get(f"{s.control_url}/metrics", timeout=10).text
    for name, kills in (("triton", 1), ("control-plane", 2), ("gateway", 1), ("mlflow", 1)):
        line = f'visionguard_stack_child_restarts_total{{child="{name}"}} '
        counts = [float(x.split()[-1]) for x in scrape.splitlines() if x.startswith(line)]
        assert counts and counts[0] >= kills, (name, counts)
    assert status(s)["ready"] is True
    assert durable_state(f) == before

    print_figures(figures, tmp_path / "fault-figures.json")


def print_figures(figures: list[dict], path: Path) -> None:
    path.write_text(json.dumps(figures, indent=2))
    columns = ["child", "requests", "ok", "503", "connection_errors", "transport_errors",
               "first_503_s", "back_to_200_s", "restarted_s"]
    print(f"\nfault figures ({path}):")
    print("  ".join(f"{c:>17}" for c in columns))
    for row in figures:
        print("  ".join(f"{str(row[c]):>17}" for c in columns))
