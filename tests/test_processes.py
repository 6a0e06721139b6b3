"""Supervised children: restarted alone when they die, with backoff and a limit; never
outliving the supervisor, even when it is killed outright; and `up`'s first run, which answers
while the bootstrap detector trains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest


def test_children_die_with_a_sigkilled_supervisor(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(os.getcwd())!r})
        from control_plane.stack.supervisor import Supervisor
        sup = Supervisor(Path({str(tmp_path)!r}))
        child = sup.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
        print(child.proc.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert psutil.pid_exists(child_pid)
    parent.send_signal(signal.SIGKILL)  # no handler runs: only the kernel can clean up
    parent.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child_pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    gone = not psutil.pid_exists(child_pid) or \
        psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    assert gone, "child outlived its SIGKILLed supervisor"


def test_stop_ends_the_whole_process_group(tmp_path):
    from control_plane.stack.supervisor import Supervisor

    sup = Supervisor(tmp_path)
    # A child that starts a grandchild, as tritonserver starts its python-backend stubs.
    child = sup.start("parent", [sys.executable, "-c",
                                 "import subprocess, sys, time; "
                                 "p = subprocess.Popen([sys.executable, '-c', "
                                 "'import time; time.sleep(600)']); "
                                 "print(p.pid, flush=True); time.sleep(600)"])
    deadline = time.monotonic() + 10
    while not (tmp_path / "parent.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "parent.log").read_text().split()[0])
    sup.stop(grace_s=5)
    assert child.proc.poll() is not None
    time.sleep(0.2)
    assert not psutil.pid_exists(grandchild) or \
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_and_logged(tmp_path, caplog):
    from control_plane.settings import Settings
    from control_plane.stack import triton_server
    from control_plane.stack.supervisor import Supervisor

    sup = Supervisor(tmp_path)
    child = sup.start("stubborn", [sys.executable, "-c",
                                   "import signal, time; signal.signal(signal.SIGTERM, "
                                   "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"])
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "stubborn.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="visionguard.supervisor"):
        sup.stop(grace_s=1)
    assert child.proc.returncode == -signal.SIGKILL and time.monotonic() - t0 < 5
    [killed] = [r for r in caplog.records if getattr(r, "event", "") == "child_killed"]
    assert killed.child == "stubborn" and "did not stop within 1 s" in killed.getMessage()
    # Triton waits this long for inferences in flight, within the supervisor's grace: after a
    # rejected candidate it counted one that never ended and waited out its default 30 s.
    settings = Settings(runtime_dir=tmp_path / "runtime")
    assert "--exit-timeout-secs=5" in triton_server.command(settings)


# --- restarts ---------------------------------------------------------------------------------

FAST = dict(backoff_s=0.2, max_backoff_s=1.0, window_s=120.0)


def _wait_for(predicate, timeout_s: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_child_is_restarted_alone_and_logged(tmp_path, caplog):
    import json

    from control_plane.stack.supervisor import RestartPolicy, StatusFile, Supervisor

    status = StatusFile(tmp_path / "status.json")
    sup = Supervisor(tmp_path / "logs", RestartPolicy(max_restarts=3, **FAST), status)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    starts = []

    def command():  # asked again at each start (Triton's models are)
        starts.append(time.monotonic())
        return sleeper

    try:
        victim = sup.start("victim", command)
        bystander = sup.start("bystander", sleeper)
        first_pid, bystander_pid = victim.proc.pid, bystander.proc.pid
        sup.watch()
        with caplog.at_level("INFO", logger="visionguard.supervisor"):
            os.kill(first_pid, signal.SIGKILL)
            _wait_for(lambda: victim.proc.pid != first_pid and victim.proc.poll() is None,
                      what="the restart")
        assert len(starts) == 2
        assert bystander.proc.pid == bystander_pid and bystander.proc.poll() is None
        events = [r for r in caplog.records if getattr(r, "event", "") == "child_restarted"]
        assert [(r.child, r.exit_code, r.attempt) for r in events] == [
            ("victim", -signal.SIGKILL, 1)]
        state = json.loads((tmp_path / "status.json").read_text())["children"]
        assert state["victim"] == {**state["victim"], "state": "running", "restarts": 1,
                                   "pid": victim.proc.pid, "last_exit_code": -signal.SIGKILL}
        assert state["bystander"]["restarts"] == 0
    finally:
        sup.stop(grace_s=5)
    assert victim.proc.poll() is not None and bystander.proc.poll() is not None


def test_restarts_back_off_and_a_child_that_keeps_failing_stops_the_supervisor(tmp_path, caplog):
    from control_plane.stack.supervisor import RestartPolicy, Supervisor

    policy = RestartPolicy(max_restarts=3, **FAST)
    sup = Supervisor(tmp_path / "logs", policy)
    starts = []

    def command():
        starts.append(time.monotonic())
        return [sys.executable, "-c", "import sys; print('bad config', flush=True); sys.exit(3)"]

    try:
        with caplog.at_level("INFO", logger="visionguard.supervisor"):
            sup.start("flaky", command)
            sup.watch()
            reason = sup.wait()
    finally:
        sup.stop(grace_s=5)
    assert len(starts) == 1 + policy.max_restarts
    assert reason.startswith("flaky exited with code 3: 4 exits")
    assert str(tmp_path / "logs" / "flaky.log") in reason
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    for attempt, gap in enumerate(gaps):  # each restart waited at least its backoff
        assert gap >= policy.delay(attempt)
    assert [r.attempt for r in caplog.records
            if getattr(r, "event", "") == "child_restarted"] == [1, 2, 3]
    assert [r.child for r in caplog.records if getattr(r, "event", "") == "child_failed"] == [
        "flaky"]


def test_restarted_children_die_with_a_sigkilled_supervisor(tmp_path):
    """A restart forks from the supervisor's watcher thread, and PR_SET_PDEATHSIG follows the
    thread that forked: the restarted child must still die with the process."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(os.getcwd())!r})
        from control_plane.stack.supervisor import RestartPolicy, Supervisor
        sup = Supervisor(Path({str(tmp_path)!r}), RestartPolicy(backoff_s=0.1))
        child = sup.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
        first = child.proc.pid
        sup.watch()
        os.kill(first, signal.SIGKILL)
        while child.proc.pid == first:
            time.sleep(0.05)
        print(child.proc.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    restarted = int(parent.stdout.readline())
    assert psutil.pid_exists(restarted)
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def gone() -> bool:
        try:
            return psutil.Process(restarted).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    _wait_for(gone, 10, "the restarted child to die with its supervisor")


# --- a first run --------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_first_run_answers_while_the_bootstrap_trains_and_ctrl_c_stops_it(tmp_path):
    """`up` on a fresh runtime directory (no model, no registry), its output a file as in CI:
    the control plane, the MLflow UI and the gateway answer while the bootstrap detector trains;
    /healthz answers and /readyz says which epoch and how long; each epoch is a log line;
    Ctrl-C in the middle of the training stops every process and frees every port."""
    import json
    import socket

    import httpx

    from tests.conftest import settings_from, stack_env

    # The default number of epochs but few images, so that an epoch takes seconds, not
    # minutes; what is tested is the same. The full-size first run is timed on a fresh clone
    # for the README (issue 16), not here.
    env = {**stack_env(tmp_path / "unused", tmp_path / "runtime", mlflow_ui=True),
           "VG_BOOTSTRAP_TRAIN_IMAGES": "64", "VG_BOOTSTRAP_VAL_IMAGES": "16"}
    del env["VG_MODEL_REPOSITORY"]
    s = settings_from(env)
    log = tmp_path / "up.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "control_plane", "up"], env=env,
                              cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    gateway = f"http://127.0.0.1:{s.gateway_port}"

    def answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def readiness() -> dict | None:
        try:
            r = httpx.get(f"{gateway}/readyz", timeout=2)
        except httpx.HTTPError:
            return None
        return {**r.json(), "http": r.status_code, "retry_after": r.headers.get("retry-after")}

    try:
        answered = {}
        for name, url in (("control plane", f"{s.control_url}/healthz"),
                          ("MLflow UI", f"http://127.0.0.1:{s.mlflow_ui_port}/health"),
                          ("gateway", f"{gateway}/healthz")):
            _wait_for(lambda: up.poll() is None and answers(url) or up.poll() is not None,
                      240, f"the {name}")
            assert up.poll() is None, log.read_text()
            answered[name] = round(time.monotonic() - t0, 1)
        ready = _wait_for(lambda: (lambda r: r if r and "epoch 1/" in r.get("reason", "")
                                   else None)(readiness()), 600, "the first epoch")
        assert ready["http"] == 503 and int(ready["retry_after"]) >= 1
        assert ready["reason"].startswith("training the bootstrap detector: epoch 1/18, ")
        assert "min" in ready["reason"]  # about N min left / less than a minute left
        assert answers(f"{gateway}/healthz")
        epochs = [e for e in map(json.loads, (s.runtime_dir / "logs" / "up.log").read_text()
                                 .splitlines()) if e.get("event") == "training_epoch"]
        assert epochs and epochs[0]["epoch"] == 1 and epochs[0]["threads"] >= 1
        assert "bootstrap training epoch 1/18" in log.read_text()  # on the console too
        print(f"\nfirst run: answering after {answered} s; epoch 1 done after "
              f"{time.monotonic() - t0:.0f} s ({epochs[0]['epoch_s']} s, "
              f"{epochs[0]['threads']} threads)")
        children = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=120)
    assert code == 130, log.read_text()
    _wait_for(lambda: not [p for p in children if psutil.pid_exists(p)
                           and psutil.Process(p).status() != psutil.STATUS_ZOMBIE],
              30, "every child to stop")
    for port in (s.gateway_port, s.control_port, s.mlflow_ui_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"


# --- a service started through the CLI -----------------------------------------------------------

@pytest.mark.integration
def test_a_gateway_served_through_the_cli_logs_as_the_gateway_on_stdout(tmp_path):
    """`visionguard serve gateway` logs its own records (logger visionguard.*) as the gateway, as
    JSON on stdout, where `up` and a pod collect them: not into the CLI's logs/cli.log."""
    import json

    from tests.conftest import free_ports

    port, control = free_ports(2)
    env = {**os.environ, "VG_RUNTIME_DIR": str(tmp_path / "runtime"),
           # no control plane there: the gateway logs that its routing fetch failed
           "VG_GATEWAY_CONTROL_URL": f"http://127.0.0.1:{control}",
           "VG_GATEWAY_TRITON_URL": f"127.0.0.1:{free_ports(1)[0]}"}
    log = tmp_path / "gateway.out"
    with open(log, "wb") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "control_plane", "serve", "gateway",
                                    "--port", str(port)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        def routing_line():
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and json.loads(line).get("logger") == "visionguard.routing":
                    return json.loads(line)
            assert gateway.poll() is None, log.read_text()
            return None

        record = _wait_for(routing_line, 60, "the gateway's routing log line")
    finally:
        gateway.send_signal(signal.SIGINT)
        gateway.wait(timeout=30)
    assert record["service"] == "gateway" and record["event"] == "routing_fetch_failed"
    cli_log = tmp_path / "runtime" / "logs" / "cli.log"
    assert not cli_log.exists() or "visionguard.routing" not in cli_log.read_text()
