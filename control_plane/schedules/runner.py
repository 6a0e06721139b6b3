"""`up`'s own scheduler: the jobs of `jobs.py` at their cron times, as child processes.

One thread wakes at the next cron time (croniter computes it) and starts each due job in a
thread of its own; a job whose previous run is still going skips this time, as a CronJob with
`concurrencyPolicy: Forbid` does. Each run is one log record (logger `visionguard.schedule`,
event `scheduled_job`: job, exit status, duration), which `up` writes to logs/up.log and its
console; the step's own output goes to logs/schedule-<job>.log.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from croniter import croniter

from control_plane.errors import ControlPlaneError
from control_plane.schedules.jobs import Job

log = logging.getLogger("visionguard.schedule")

# The loop re-reads the clock at least this often, so a clock that jumps is noticed.
MAX_SLEEP_S = 60.0
# Exit status of a run killed at its deadline (as coreutils' timeout reports it).
TIMED_OUT = 124


class InvalidSchedule(ControlPlaneError):
    code = "invalid_schedule"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def next_run(cron: str, after: datetime) -> datetime:
    """The first time strictly after `after` that `cron` names (five fields, UTC)."""
    return croniter(cron, after.astimezone(timezone.utc)).get_next(datetime)


def validate(jobs: tuple[Job, ...]) -> None:
    for job in jobs:
        if len(job.cron.split()) != 5 or not croniter.is_valid(job.cron):
            raise InvalidSchedule(f"job {job.name}: {job.cron!r} is not a valid five-field "
                                  "cron expression (VG_SCHEDULE_*)", job=job.name, cron=job.cron)


class CliLauncher:
    """Runs a job's CLI step in a child process: `python -m control_plane` is the `visionguard`
    command of this environment. Output is appended to <log_dir>/schedule-<job>.log; a run past
    its deadline is killed (exit status 124)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def command(self, job: Job) -> list[str]:
        return [sys.executable, "-m", "control_plane", *job.argv[1:]]

    def __call__(self, job: Job) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"schedule-{job.name}.log", "ab") as out:
            out.write(f"--- {utc_now().isoformat(timespec='seconds')} "
                      f"{' '.join(job.argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(self.command(job), env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            with self._lock:
                self._procs.add(proc)
            try:
                return proc.wait(timeout=job.deadline_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return TIMED_OUT
            finally:
                with self._lock:
                    self._procs.discard(proc)

    def terminate(self) -> None:
        """Stop the runs in progress (the stack is stopping)."""
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()


class Scheduler:
    """Starts each job at its cron times. `launch` runs one job and returns its exit status;
    `now` is the clock (tests pass their own and call `tick()`); `on_stop` ends the runs in
    progress when the scheduler stops."""

    def __init__(self, jobs: tuple[Job, ...], launch: Callable[[Job], int],
                 now: Callable[[], datetime] = utc_now,
                 on_stop: Callable[[], None] | None = None) -> None:
        validate(jobs)
        self.jobs = jobs
        self._launch = launch
        self._now = now
        self._on_stop = on_stop
        self.next_runs: dict[str, datetime] = {}
        self.plan()
        self._runs: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def plan(self) -> None:
        """Each job's next run after now."""
        now = self._now()
        self.next_runs = {job.name: next_run(job.cron, now) for job in self.jobs}

    def tick(self) -> list[threading.Thread]:
        """Start the jobs whose time has come; the started runs' threads."""
        now = self._now()
        started = []
        for job in self.jobs:
            if self.next_runs[job.name] > now:
                continue
            self.next_runs[job.name] = next_run(job.cron, now)
            previous = self._runs.get(job.name)
            if previous is not None and previous.is_alive():
                log.warning("scheduled job %s skipped: its previous run is still going",
                            job.name, extra={"event": "scheduled_job_skipped", "job": job.name})
                continue
            run = threading.Thread(target=self.run, args=(job,), name=f"schedule-{job.name}",
                                   daemon=True)
            self._runs[job.name] = run
            run.start()
            started.append(run)
        return started

    def run(self, job: Job) -> int:
        """Run `job` now and log the run; its exit status (-1: it could not be started)."""
        t0 = time.monotonic()
        error = ""
        try:
            status = self._launch(job)
        except Exception as exc:  # a job that cannot start must not end the scheduler
            status, error = -1, f"{type(exc).__name__}: {exc}"
        duration = time.monotonic() - t0
        extra = {"event": "scheduled_job", "job": job.name, "argv": list(job.argv),
                 "exit_status": status, "duration_s": round(duration, 3),
                 **({"error": error} if error else {})}
        if status == 0:
            log.info("scheduled job %s done in %.1f s", job.name, duration, extra=extra)
        else:
            log.warning("scheduled job %s failed (exit status %d) after %.1f s%s", job.name,
                        status, duration, f": {error}" if error else "", extra=extra)
        return status

    def _seconds_to_next(self) -> float:
        soonest = min(self.next_runs.values())
        return min(MAX_SLEEP_S, max(0.0, (soonest - self._now()).total_seconds()))

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds_to_next()):
            self.tick()

    def start(self) -> None:
        self.plan()  # from now: no run is owed for the time the stack took to start
        log.info("schedule: %s", ", ".join(f"{j.name} ({j.cron} UTC)" for j in self.jobs),
                 extra={"event": "schedule_started",
                        "jobs": {j.name: j.cron for j in self.jobs}})
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._on_stop is not None:
            self._on_stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
