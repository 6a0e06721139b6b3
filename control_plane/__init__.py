"""VisionGuard control plane: releases of MLflow model versions into Triton, drift, the log
assistant, the embedded stack and the `visionguard` CLI.

One subpackage per job, in layers (each imports only from layers below it; `lint-imports`
checks the contracts in pyproject.toml in the test suite):

    cli.py              registers the wings' commands; builds Settings once per process
    api/                the HTTP app factory, error mapping, /metrics
    stack/              `up`, the process supervisor, the Triton process, the environment bootstrap
    releases/ drift/ logs/ streaming/ console/ schedules/
                        the wings, independent of each other (streaming: `visionguard
                        stream`, a video source into a gateway stream; console: the release
                        console page at /console; schedules: the scheduled jobs, run by `up`,
                        Kubernetes CronJobs or Airflow)
    reports/            the release report per model version (HTML, PDF)
    evaluation/         COCO cross-check of Ultralytics' metrics; robustness under corruptions
    training/ perf/     the bootstrap and dataset training; perf_analyzer
    datasets/           dataset versions: import (COCO, YOLO, VOC), validation, lineage; the
                        generated shapes and image shifts
    mlflow_store.py auth.py notify/ api_client.py
                        MLflow store and aliases; API tokens and roles; notifications (signed
                        webhooks, apprise channels); the CLI's calls to the running API
    errors.py settings.py       the error vocabulary; the settings

The gateway (`tracker_service`) never imports this package; this package uses only the gateway's
shared modules (letterbox, NMS, drift features, telemetry, the routing contract).
"""
