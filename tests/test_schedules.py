"""Scheduled pipelines (control_plane/schedules): the jobs read from the settings, the next run
of each cron expression, `up`'s scheduler on an injected clock (no real cron time is waited
for), one real CLI step run as the scheduler runs it, and the Airflow DAGs imported by Airflow.

The CronJobs are checked against the same job list in tests/test_k8s.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from control_plane.schedules.jobs import Job, jobs
from control_plane.schedules.runner import CliLauncher, InvalidSchedule, Scheduler, next_run
from control_plane.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
UTC = timezone.utc


@pytest.fixture
def default_settings(monkeypatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("VG_SCHEDULE_")]:
        monkeypatch.delenv(name)
    return Settings()


def by_name(settings: Settings) -> dict[str, Job]:
    return {job.name: job for job in jobs(settings)}


def test_jobs_are_the_cli_steps_at_their_default_times(default_settings):
    found = by_name(default_settings)
    assert {name: (job.argv, job.cron, job.role) for name, job in found.items()} == {
        "drift-check": (("visionguard", "drift", "check", "--ok-without-data"), "0 * * * *",
                        "viewer"),
        "retrain-approved": (("visionguard", "drift", "retrain-approved"), "*/15 * * * *",
                             "viewer"),
        "nightly-report": (("visionguard", "models", "report", "champion"), "0 2 * * *", None),
    }
    assert default_settings.schedule_enabled


def test_schedules_come_from_the_settings(default_settings, monkeypatch):
    monkeypatch.setenv("VG_SCHEDULE_DRIFT_CHECK", "*/5 * * * *")
    monkeypatch.setenv("VG_SCHEDULE_NIGHTLY_REPORT", "30 23 * * 1-5")
    monkeypatch.setenv("VG_SCHEDULE_ENABLED", "0")
    settings = Settings()
    found = by_name(settings)
    assert found["drift-check"].cron == "*/5 * * * *"
    assert found["nightly-report"].cron == "30 23 * * 1-5"
    assert found["retrain-approved"].cron == "*/15 * * * *"
    assert not settings.schedule_enabled


def test_every_step_is_a_command_of_the_cli(default_settings):
    """The argv each engine runs parses as a `visionguard` command (its --help answers)."""
    from typer.testing import CliRunner

    from control_plane.cli import app

    for job in jobs(default_settings):
        result = CliRunner().invoke(app, [*job.argv[1:], "--help"])
        assert result.exit_code == 0, f"{job.argv}: {result.output}"


def test_next_run_of_each_default_schedule(default_settings):
    found = by_name(default_settings)
    now = datetime(2026, 3, 1, 13, 7, 30, tzinfo=UTC)
    assert next_run(found["drift-check"].cron, now) == datetime(2026, 3, 1, 14, tzinfo=UTC)
    assert next_run(found["retrain-approved"].cron, now) == \
        datetime(2026, 3, 1, 13, 15, tzinfo=UTC)
    assert next_run(found["nightly-report"].cron, now) == datetime(2026, 3, 2, 2, tzinfo=UTC)
    # Strictly after: a run at 14:00 is followed by 15:00. The expressions are UTC: 02:30 in
    # Paris is 01:30 UTC, so 02:00 UTC is still to come that day.
    assert next_run("0 * * * *", datetime(2026, 3, 1, 14, tzinfo=UTC)) == \
        datetime(2026, 3, 1, 15, tzinfo=UTC)
    paris = timezone(timedelta(hours=1))
    assert next_run("0 2 * * *", datetime(2026, 3, 1, 2, 30, tzinfo=paris)) == \
        datetime(2026, 3, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize("cron", ["61 * * * *", "0 * * *", "0 0 * * * *", "every hour"])
def test_a_bad_cron_expression_is_refused(cron):
    job = Job("drift-check", ("visionguard", "drift", "check"), cron, "viewer", 60, "")
    with pytest.raises(InvalidSchedule, match="drift-check"):
        Scheduler((job,), launch=lambda _job: 0)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_scheduler_starts_due_jobs_once_logs_each_run_and_skips_overlaps(default_settings,
                                                                         caplog):
    clock = Clock(datetime(2026, 3, 1, 13, 7, 30, tzinfo=UTC))
    release = threading.Event()
    launched: list[str] = []

    def launch(job: Job) -> int:
        launched.append(job.name)
        if job.name == "retrain-approved":
            release.wait(10)  # a training that outlasts its next scheduled time
            return 0
        return 3  # drift detected (`drift check --fail-on-drift` exits 3)

    scheduler = Scheduler(jobs(default_settings), launch, now=clock)
    with caplog.at_level(logging.INFO, logger="visionguard.schedule"):
        assert scheduler.tick() == []  # nothing is due at 13:07:30
        clock.now = datetime(2026, 3, 1, 13, 15, tzinfo=UTC)
        (training,) = scheduler.tick()
        clock.now = datetime(2026, 3, 1, 14, 0, 5, tzinfo=UTC)
        (check,) = scheduler.tick()  # drift-check runs; retrain-approved is still going
        check.join(10)
        assert scheduler.tick() == []  # 14:00 was taken: the next drift check is at 15:00
        release.set()
        training.join(10)
    assert launched == ["retrain-approved", "drift-check"]
    assert scheduler.next_runs["drift-check"] == datetime(2026, 3, 1, 15, tzinfo=UTC)
    assert scheduler.next_runs["retrain-approved"] == datetime(2026, 3, 1, 14, 15, tzinfo=UTC)
    runs = {r.job: r for r in caplog.records if getattr(r, "event", "") == "scheduled_job"}
    assert set(runs) == {"retrain-approved", "drift-check"}
    assert runs["drift-check"].exit_status == 3 and runs["drift-check"].levelname == "WARNING"
    assert runs["retrain-approved"].exit_status == 0
    assert runs["drift-check"].argv == ["visionguard", "drift", "check", "--ok-without-data"]
    assert all(r.duration_s >= 0 for r in runs.values())
    skipped = [r for r in caplog.records if getattr(r, "event", "") == "scheduled_job_skipped"]
    assert [r.job for r in skipped] == ["retrain-approved"]


def test_a_triggered_run_is_the_real_cli_step(default_settings, tmp_path, caplog):
    """`up`'s launcher runs the drift check as the `visionguard` command of this environment;
    with the control plane unreachable it exits 1, and the run says so in the log and in the
    step's own log file."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VG_CONTROL_URL": f"http://127.0.0.1:{port}", "VG_TOKEN": "x",
           "VG_RUNTIME_DIR": str(tmp_path / "runtime")}
    launcher = CliLauncher(env, tmp_path / "logs")
    check = by_name(default_settings)["drift-check"]
    assert launcher.command(check)[1:] == ["-m", "control_plane", *check.argv[1:]]
    scheduler = Scheduler((check,), launcher, on_stop=launcher.terminate)
    with caplog.at_level(logging.INFO, logger="visionguard.schedule"):
        assert scheduler.run(check) == 1
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "scheduled_job"]
    assert (record.job, record.exit_status) == ("drift-check", 1)
    log = (tmp_path / "logs" / "schedule-drift-check.log").read_text()
    assert "visionguard drift check --ok-without-data" in log
    assert f"control plane at http://127.0.0.1:{port} unreachable" in log


# --- Airflow ---------------------------------------------------------------------------------

# Imports the DAG file the way Airflow's DAG processor does and prints what it found.
DAG_REPORT = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="control_plane/schedules/airflow_dag.py")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {d.dag_id: {
        "schedule": str(d.schedule), "max_active_runs": d.max_active_runs,
        "catchup": d.catchup,
        "tasks": [{"id": t.task_id, "command": t.bash_command,
                   "upstream": sorted(t.upstream_task_ids),
                   "timeout_s": t.execution_timeout.total_seconds()} for t in d.tasks]}
        for d in bag.dags.values()}}))
"""


def airflow_python() -> str | None:
    """This interpreter when Airflow installs beside the project, else the one
    VG_TEST_AIRFLOW_PYTHON names (Airflow in its own environment, README "Schedules")."""
    if importlib.util.find_spec("airflow") is not None:
        return sys.executable
    return os.environ.get("VG_TEST_AIRFLOW_PYTHON") or None


def test_airflow_dags_run_the_same_steps(default_settings, tmp_path):
    python = airflow_python()
    if python is None:
        pytest.skip("Airflow is not importable here and VG_TEST_AIRFLOW_PYTHON names no "
                    "interpreter that has it (Airflow 3 gets its own environment: beside the "
                    "project it adds 52 packages and moves MLflow's fastapi pin)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VG_SCHEDULE_")}
    env.update(PYTHONPATH=str(ROOT), AIRFLOW_HOME=str(tmp_path),
               AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = subprocess.run([python, "-c", DAG_REPORT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    expected = {f"visionguard_{job.name.replace('-', '_')}": job
                for job in jobs(default_settings)}
    assert sorted(report["dags"]) == sorted(expected)
    for dag_id, job in expected.items():
        dag = report["dags"][dag_id]
        assert (dag["schedule"], dag["max_active_runs"], dag["catchup"]) == (job.cron, 1, False)
        # One step per job, nothing before it: the jobs are independent, as the CronJobs are.
        assert dag["tasks"] == [{"id": job.name.replace("-", "_"),
                                 "command": " ".join(job.argv), "upstream": [],
                                 "timeout_s": job.deadline_s}]


def test_a_request_being_trained_elsewhere_is_not_trained_again(tmp_path, monkeypatch, capsys):
    """`drift approve` (training in a shell) and a scheduled `retrain-approved` on the same
    machine: the second one finds the request's lock held and does not start a training."""
    import fcntl

    from control_plane.drift import commands
    from control_plane.training import train

    settings = Settings(runtime_dir=tmp_path)
    trained = []
    monkeypatch.setattr(train, "train_command", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(commands, "_retrained_requests", lambda s: set())
    (tmp_path / "retraining").mkdir()
    with open(tmp_path / "retraining" / "r1.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the other process, training r1
        commands._retrain(settings, "r1", None)
    assert trained == [] and "being trained by another process" in capsys.readouterr().out
    monkeypatch.setattr(commands, "_retrained_requests", lambda s: {"r1"})
    commands._retrain(settings, "r1", None)  # the other one finished and tagged its version
    assert trained == [] and "already has a trained version" in capsys.readouterr().out
