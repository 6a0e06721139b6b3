"""Release reports: one HTML page (and its PDF) per model version that a person reads, built from
the version's MLflow record, its dataset's validation and its evaluation artifacts.

Read in this order: `report.py` (`build_report`, `attach`, `write_report`: the whole),
`collect.py` (what MLflow and the datasets store say about the version and its champion),
`detections.py` (sample detections drawn on validation images), `charts.py` (the robustness
chart when the run has no picture of it) and `templates/report.html.j2` (the page).

May import `evaluation`, `training`, `datasets`, the MLflow store, errors and settings; never
`releases`, `drift`, `logs`, `stack` or `api`, which may import this package.
"""
