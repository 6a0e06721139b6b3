"""The scheduled jobs: one list that every engine reads.

Each job is one `visionguard` CLI step with a cron expression from the settings
(`VG_SCHEDULE_*`, five fields, UTC). `role` is the control-plane token role the step needs
(None: it talks to MLflow only); the CronJobs get a token of that role from the
`visionguard-schedule-token` Secret, `up` makes one for itself. `deadline_s` bounds a run
(activeDeadlineSeconds, Airflow's execution_timeout, the local runner's timeout).

Only the standard library and the settings are imported here, so Airflow's own environment can
read the jobs with the project installed without its dependencies (`pip install --no-deps`).
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.settings import Settings


@dataclass(frozen=True)
class Job:
    name: str  # the CronJob's name, the Airflow DAG id's suffix, the local log's name
    argv: tuple[str, ...]  # the CLI step, starting with `visionguard`
    cron: str
    role: str | None
    deadline_s: int
    description: str


def jobs(settings: Settings) -> tuple[Job, ...]:
    """The drift check (hourly by default), the training of requests a person approved (every
    15 minutes; nothing to do unless one waits) and the champion's report (02:00 UTC)."""
    return (
        Job("drift-check", ("visionguard", "drift", "check", "--ok-without-data"),
            settings.schedule_drift_check, role="viewer", deadline_s=900,
            description="compare the live window with the champion's reference window"),
        Job("retrain-approved", ("visionguard", "drift", "retrain-approved"),
            settings.schedule_retrain_approved, role="viewer", deadline_s=4 * 3600,
            description="train a new version for each approved retraining request"),
        Job("nightly-report", ("visionguard", "models", "report", "champion"),
            settings.schedule_nightly_report, role=None, deadline_s=1800,
            description="the champion's release report, attached to its MLflow run"),
    )
