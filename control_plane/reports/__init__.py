"""Release reports: one HTML page (and its PDF) per model version that a person reads, built from
the version's MLflow record, its dataset's validation and its evaluation artifacts.

May import `evaluation`, `training`, `datasets`, the MLflow store, errors and settings; never
`releases`, `drift`, `logs`, `stack` or `api`, which may import this package.
"""
