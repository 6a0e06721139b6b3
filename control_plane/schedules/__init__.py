"""Scheduled pipelines: the drift check, the training of approved retraining requests and the
champion's nightly report, defined once (`jobs.py`) and run by whichever engine the site has:
`up` itself (`runner.py`), Kubernetes CronJobs (k8s/base/cronjobs.yaml, checked against
`jobs.py` by tests/test_k8s.py) or Airflow (`airflow_dag.py`). Every engine runs the same
`visionguard` CLI steps, in a process of their own, so a step behaves the same wherever it is
scheduled.

A wing-level package: it imports only settings and errors (never the wings whose commands it
runs), and `stack` imports it for `up`.
"""
