"""Training: the offline bootstrap detector and models trained on a dataset version, with
Ultralytics, logged to MLflow; and evaluation of a checkpoint on a dataset.

May import `datasets`, the MLflow store, errors, settings and `export`; never `evaluation`,
`reports`, `releases`, `drift`, `logs`, `stack` or `api`.
"""
