"""Evaluation a team can trust: a checkpoint scored on a dataset version by Ultralytics'
validator and, on the same predictions, by an independent COCO evaluator; and robustness under
image corruptions at three severities.

May import `training`, `datasets`, the MLflow store, errors, settings and `export`; never
`reports`, `releases`, `drift`, `logs`, `stack` or `api`.
"""
