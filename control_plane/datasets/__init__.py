"""Datasets: immutable, versioned training data in the layout Ultralytics trains on, imported
from COCO JSON, YOLO folders or Pascal VOC XML (or generated), validated by named rules, and
logged to MLflow so every run and model version names the exact data it saw.

Read in this order: `store.py` (`DatasetStore`: the import pipeline, versions, `get`/`list`),
`sources.py` (the formats, read with supervision), `layout.py` (a version's folder, manifest
and content hash), `validate.py` and `rules.py` (the checks, their severities and thresholds),
`scan.py` (one pass over the images: decode, size, EXIF, perceptual hash), `duplicates.py`,
`lineage.py` (MLflow), `synthetic_data.py` (the generator of shapes scenes), `synthetic.py`
(generated shapes as one dataset among others), `image_shifts.py` (generated covariate shifts
for drift checks) and `commands.py` (`visionguard data ...`).

May import errors, settings and the MLflow store; never `training`, `evaluation`, `reports`,
`releases`, `drift`, `logs`, `stack` or `api`, which may import this package.
"""
