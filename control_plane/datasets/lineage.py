"""Datasets in MLflow: each version as an MLflow dataset (name, digest, local source, profile),
logged once as the input of a run in the `visionguard-datasets` experiment, and the inputs a
training run logs so it names the exact data it saw.

Each entity carries the dataset's name, the first 36 hex digits of its content hash as digest, source type `local` with
the version folder's URI, context `training` for the whole and `evaluation` for `NAME/val`.
"""

from __future__ import annotations

import json

from control_plane.datasets.layout import DatasetVersion
from control_plane.errors import ControlPlaneError
from control_plane.mlflow_store import experiment_id, mlflow_client, store_for
from control_plane.settings import Settings

EXPERIMENT = "visionguard-datasets"
DIGEST_CHARS = 36


def mlflow_dataset(version: DatasetVersion, split: str | None = None):
    """The MLflow dataset entity of a version (or of one split, named NAME/split)."""
    from mlflow.entities import Dataset

    digest = version.split_hashes[split] if split else version.hash
    counts = version.counts.get(split, {}) if split else version.counts
    profile = {"version": version.version, "classes": version.classes, "counts": counts}
    return Dataset(name=f"{version.name}/{split}" if split else version.name,
                   digest=digest[:DIGEST_CHARS], source_type="local",
                   source=json.dumps({"uri": version.path.as_uri()}),
                   profile=json.dumps(profile))


def mlflow_inputs(version: DatasetVersion) -> list:
    """A training run's inputs: the version (context training) and its val split (evaluation).
    `client.log_inputs(run_id, datasets=mlflow_inputs(v))`."""
    from mlflow.entities import DatasetInput, InputTag

    return [DatasetInput(mlflow_dataset(version), [InputTag("mlflow.data.context", "training")]),
            DatasetInput(mlflow_dataset(version, "val"),
                         [InputTag("mlflow.data.context", "evaluation")])]


def find_run(client, exp_id: str, version: DatasetVersion) -> str | None:
    runs = client.search_runs([exp_id], filter_string=f"tags.dataset_hash = '{version.hash}' "
                              f"and tags.dataset = '{version.name}'", max_results=1)
    return runs[0].info.run_id if runs else None


def log_version(settings: Settings, version: DatasetVersion) -> str:
    """The run that records `version` (created once; an import of the same content finds it)."""
    from mlflow.entities import DatasetInput, InputTag, Param, RunTag

    try:
        store = store_for(settings)
        client = mlflow_client(store)
        exp_id = experiment_id(client, store, EXPERIMENT)
        existing = find_run(client, exp_id, version)
        if existing:
            return existing
        tags = {"visionguard.kind": "dataset", "dataset": version.name,
                "dataset_version": version.version, "dataset_hash": version.hash,
                "dataset_format": version.source.get("format", "")}
        run = client.create_run(exp_id, run_name=version.ref, tags=tags)
        run_id = run.info.run_id
        params = {"classes": ",".join(version.classes), "source": version.source.get("uri", ""),
                  **{f"{s}_{k}": v for s, c in version.counts.items() for k, v in c.items()
                     if k != "per_class"}}
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                         tags=[RunTag("mlflow.note.content",
                                      f"dataset {version.ref} at {version.path}")])
        client.log_inputs(run_id, datasets=[
            DatasetInput(mlflow_dataset(version), [InputTag("mlflow.data.context", "dataset")]),
            *(DatasetInput(mlflow_dataset(version, s), [InputTag("mlflow.data.context", s)])
              for s in version.split_hashes)])
        for name in ("manifest.json", "validation.json", "data.yaml"):
            if (version.path / name).is_file():
                client.log_artifact(run_id, str(version.path / name))
        client.set_terminated(run_id, "FINISHED")
        return run_id
    except ControlPlaneError:
        raise
    except Exception as exc:  # MLflow's errors, an unreachable tracking server
        raise ControlPlaneError(f"dataset {version.ref} is stored at {version.path}, but logging "
                                f"it to MLflow failed ({exc}); import it again to log it",
                                ref=version.ref) from exc
