"""Where MLflow keeps runs and registered models, and the release aliases' names.

The bottom of the control plane's MLflow use: training logs runs here, the registry moves
aliases here, drift reads the champion's lineage here. It imports nothing of the control plane
but its settings, so every wing can use it without importing another wing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from control_plane.settings import Settings

# Release aliases on registered-model versions (MLflow aliases, not the deprecated stages):
# `champion` serves, `challenger` is in canary, `previous` is the champion before the last
# promotion, kept loaded for rollback.
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


@dataclass(frozen=True)
class MlflowStore:
    """Where runs and registered models live.

    `artifact_location` is given to experiments we create, so artifacts land beside a SQLite
    store rather than in ./mlruns of whatever directory the command ran in. A tracking server
    (http/https URI) decides its own artifact store: None.
    """

    tracking_uri: str
    artifact_location: str | None


def mlflow_store(tracking_uri: str | None = None, runtime_dir: Path | None = None) -> MlflowStore:
    """The store at `tracking_uri`, else SQLite under `runtime_dir` (`mlflow.db`, artifacts in
    `mlartifacts/` beside it)."""
    uri = tracking_uri
    if not uri:
        if runtime_dir is None:
            raise ValueError("an MLflow tracking URI or a runtime directory is needed")
        runtime = Path(runtime_dir).resolve()
        runtime.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{runtime / 'mlflow.db'}"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):]).resolve()
        return MlflowStore(uri, (db.parent / "mlartifacts").as_uri())
    if parsed.scheme in ("", "file"):
        root = Path(parsed.path if parsed.scheme else uri).resolve()
        return MlflowStore(uri, (root / "mlartifacts").as_uri())
    return MlflowStore(uri, None)


def store_for(settings: Settings) -> MlflowStore:
    """The stack's store: VG_MLFLOW_TRACKING_URI, else SQLite under the runtime directory."""
    return mlflow_store(settings.mlflow_tracking_uri or None, settings.runtime_dir)


def offline() -> None:
    """Turn the libraries' own network traffic off, before they are imported.

    Ultralytics reads YOLO_OFFLINE once, at import; MLflow decides on telemetry at import too, so
    its client is set again for the case where it was imported before us.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.telemetry.client import set_telemetry_client

    set_telemetry_client()


def mlflow_client(store: MlflowStore):
    offline()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)


def experiment_id(client, store: MlflowStore, name: str) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=store.artifact_location)


def model_aliases(client, name: str) -> dict[str, str]:
    """The registered model `name`'s aliases, alias to version number; empty while the model
    is not registered yet (a fresh store), which readers treat like a model with no aliases."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return {}
    return {a: str(v) for a, v in (registered.aliases or {}).items()}


@dataclass
class ModelVersionRecord:
    """A registered model version as MLflow has it: the registry's and the report's view of a
    version start from this (they add what each reads from its tags and run)."""

    name: str
    version: str
    aliases: list[str]
    created: str  # ISO 8601, UTC
    run_id: str
    source: str
    description: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, mv, aliases: dict[str, str]):
        """From an MLflow ModelVersion and the model's aliases (`model_aliases`)."""
        return cls(name=mv.name, version=str(mv.version),
                   aliases=sorted(a for a, v in aliases.items() if v == str(mv.version)),
                   created=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                         time.gmtime((mv.creation_timestamp or 0) / 1000)),
                   run_id=mv.run_id or "", source=mv.source or "",
                   description=mv.description or "", tags=dict(mv.tags or {}))
