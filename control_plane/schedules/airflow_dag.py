"""The scheduled jobs as Airflow DAGs, for sites whose pipelines run on Airflow.

One DAG per job of `jobs.py` (`visionguard_drift_check`, `visionguard_retrain_approved`,
`visionguard_nightly_report`), each on the job's cron expression, one run at a time and no
catch-up (as the CronJobs' concurrencyPolicy Forbid), with one task that runs the job's
`visionguard` CLI step in bash; a run past the job's deadline is stopped. Nothing here repeats
the schedule: it is read from `jobs.py` with the worker's `VG_SCHEDULE_*` settings.

Install: put this file (or a one-line file importing it) in the DAGs folder; the scheduler
needs the `control_plane` package importable (the repository on PYTHONPATH, as the test does,
or the project installed with `--no-deps`: `jobs.py` needs only the standard library), the
workers need the `visionguard` command and
`VG_CONTROL_URL`, `VG_TOKEN` (role viewer) and `VG_MLFLOW_TRACKING_URI` in their environment.
Written for Airflow 3 (`airflow.sdk`); tests/test_schedules.py imports it with Airflow.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

from control_plane.schedules.jobs import jobs
from control_plane.settings import Settings

# Before any cron time a site would run this at; with catchup off, the first run is the next one.
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def dag_id(job_name: str) -> str:
    return "visionguard_" + job_name.replace("-", "_")


for _job in jobs(Settings()):
    with DAG(dag_id(_job.name), schedule=_job.cron, start_date=START, catchup=False,
             max_active_runs=1, description=_job.description,
             tags=["visionguard"]):
        BashOperator(task_id=_job.name.replace("-", "_"), bash_command=shlex.join(_job.argv),
                     execution_timeout=timedelta(seconds=_job.deadline_s))
