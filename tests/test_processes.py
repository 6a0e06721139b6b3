"""Supervised children never outlive the supervisor, even when it is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil


def test_children_die_with_a_sigkilled_supervisor(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(os.getcwd())!r})
        from control_plane.processes import Supervisor
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
    from control_plane.processes import Supervisor

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
