"""Releases: the MLflow model registry, promotion into Triton through named gates, canary,
rollback, the audit log, and their HTTP routes and CLI commands.

Read in this order: `registry.py` (versions and aliases in MLflow), `promoter.py` (lock, the
admission pipeline, alias moves, rollback), `gates.py` (the checks, in order), `fleet.py` (every
Triton's HTTP control), `golden.py`. May import `training`, `perf`, the MLflow store, auth,
errors and settings; never `drift`, `logs`, `stack` or `api`.
"""
