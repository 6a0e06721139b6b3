"""Generated shapes as one dataset among others: `visionguard data synth` renders a dataset with
`control_plane.datasets.synthetic_data.generate_dataset` into a scratch folder beside the
versions and imports it as a YOLO folder, so it is validated, hashed and logged like any source.
The same arguments give byte-identical files, so the same version: `synthetic_version` finds it
without generating anything (the bootstrap asks it first, so a second `visionguard train`
does not render and validate 750 images again to learn what it already has).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from control_plane.datasets.errors import DatasetModified, DiskFull
from control_plane.datasets.layout import DatasetVersion
from control_plane.datasets.store import (SCRATCH, DatasetStore, ImportResult, remove_tree,
                                         sweep_stale)
from control_plane.datasets import synthetic_data


def synthetic_name(seed: int) -> str:
    """The default dataset name: the generator's (`synthetic-shapes-v1-seed0`)."""
    return synthetic_data.dataset_name(seed)


def synthetic_uri(*, n_train: int, n_val: int, imgsz: int, seed: int,
                  classes: tuple[str, ...] = synthetic_data.SHAPES) -> str:
    """The source URI a generated version records: the generator's version and arguments."""
    return (f"synthetic:{synthetic_data.GENERATOR_VERSION}?seed={seed}&n_train={n_train}"
            f"&n_val={n_val}&imgsz={imgsz}&classes={','.join(classes)}")


def synthetic_version(store: DatasetStore, *, n_train: int, n_val: int, imgsz: int, seed: int,
                      classes: tuple[str, ...] = synthetic_data.SHAPES,
                      name: str | None = None) -> DatasetVersion | None:
    """The version of `name` these arguments already produced, its files checked against its
    hash (validated when it was imported; a version never changes), else None."""
    uri = synthetic_uri(n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed, classes=classes)
    for version in reversed(store.list(name or synthetic_name(seed))):
        if version.source.get("uri") == uri:
            try:
                store.verify(version)
            except DatasetModified:
                continue
            return version
    return None


def import_synthetic(store: DatasetStore, *, n_train: int, n_val: int, imgsz: int, seed: int,
                     classes: tuple[str, ...] = synthetic_data.SHAPES,
                     name: str | None = None) -> ImportResult:
    """Generate `n_train` + `n_val` images of `imgsz` px (seed `seed`) and import them as a
    version of `name` (default `synthetic_name(seed)`)."""
    store.root.mkdir(parents=True, exist_ok=True)
    sweep_stale(store.root, SCRATCH)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-", dir=store.root))
    try:
        from control_plane.datasets.scan import Progress

        store.progress(Progress("generate", 0, n_train + n_val))
        try:
            data_yaml = synthetic_data.generate_dataset(scratch, n_train=n_train, n_val=n_val,
                                                        imgsz=imgsz, seed=seed,
                                                        classes=tuple(classes))
        except OSError as exc:
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise DiskFull(f"no space left in {store.root} to generate the images") from None
            raise
        uri = synthetic_uri(n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed,
                            classes=tuple(classes))
        return store.import_(data_yaml, fmt="yolo", name=name or synthetic_name(seed),
                             classes=list(classes), source_uri=uri)
    finally:
        remove_tree(scratch)
