"""The model registry: MLflow registered-model versions, their aliases and what they carry.

MLflow holds the release state; nothing else does. Aliases (not the deprecated stages):
`champion` serves, `challenger` is in canary, `previous` is the champion before the last
promotion, kept loaded for rollback. The canary share is the registered model's tag
`canary_percent`; `shadow` is the version the gateways mirror `shadow_percent`% of the
champion's requests to (Promoter.shadow). Version N in MLflow is version N in Triton.

Every version carries its evaluation (mAP50 and mAP50-95 on a named dataset, as tags and run
metrics), its serving ONNX as a run artifact, its lineage (data, parameters, source checkpoint)
and, once measured during promotion, its perf_analyzer latency.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from control_plane.datasets.layout import file_sha256
from control_plane.errors import ControlPlaneError, NotFound
from control_plane.mlflow_store import (CHALLENGER, CHAMPION, ModelVersionRecord,
                                        experiment_id, mlflow_client, model_aliases, store_for)
from control_plane.releases.audit import AuditLog
from control_plane.settings import Settings
from control_plane.training import train as training
from tracker_service.routing import Routing

CANARY_TAG = "canary_percent"
SHADOW, SHADOW_TAG = "shadow", "shadow_percent"  # the shadow's alias and share (issue 15)
REGISTRY_EXPERIMENT = "visionguard-registry"
MAP50, MAP = training.METRIC_MAP50, training.METRIC_MAP


class RegistryError(ControlPlaneError):
    """A registration refused: a missing checkpoint or dataset, not an Ultralytics checkpoint."""


def confined(path: str | Path, roots: tuple[Path, ...], what: str) -> Path:
    """`path` resolved (symlinks and `..` followed), refused unless it lies under one of
    `roots` (VG_CHECKPOINT_ROOTS; empty: any path the process can read)."""
    text = str(path)
    if not text or "\x00" in text or len(text) > 4096:
        raise RegistryError(f"{what} path is empty, too long or has a NUL byte")
    resolved = Path(text).expanduser().resolve()
    if roots and not any(resolved.is_relative_to(root) for root in roots):
        raise RegistryError(f"{what} {text} is outside the allowed roots "
                            f"(VG_CHECKPOINT_ROOTS: {', '.join(str(r) for r in roots)})",
                            refused="outside_roots")
    return resolved


class UnknownVersion(NotFound):
    """No such version of the registered model."""


@dataclass
class VersionInfo(ModelVersionRecord):
    """A version as releases read it: its metrics, evaluation data and class names."""

    @property
    def map50(self) -> float | None:
        return _float(self.tags.get(MAP50))

    @property
    def map(self) -> float | None:
        return _float(self.tags.get(MAP))

    @property
    def eval_dataset(self) -> str:
        return self.tags.get("eval_dataset", "")

    @property
    def names(self) -> dict[int, str]:
        return {int(k): v for k, v in json.loads(self.tags.get("class_names", "{}")).items()}

    def as_dict(self) -> dict:
        return {**asdict(self), "mAP50": self.map50, "mAP50-95": self.map}


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def dataset_label(data_yaml: Path) -> str:
    """A dataset's name: the generator's header comment (`# synthetic-shapes-v1-seed0: ...`),
    else its folder's name."""
    first = Path(data_yaml).read_text().splitlines()[:1]
    if first and first[0].startswith("#") and ":" in first[0]:
        return first[0][1:].split(":", 1)[0].strip()
    return Path(data_yaml).parent.name


class Registry:
    def __init__(self, settings: Settings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or settings.model_name
        self.store = store_for(settings)
        self.client = mlflow_client(self.store)

    # --- reads ---------------------------------------------------------------------------------

    def _info(self, mv, aliases: dict[str, str]) -> VersionInfo:
        return VersionInfo.from_mlflow(mv, aliases)

    def versions(self) -> list[VersionInfo]:
        aliases = model_aliases(self.client, self.name)
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted((self._info(mv, aliases) for mv in found), key=lambda v: int(v.version))

    def get(self, version: str | int) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise UnknownVersion(f"{self.name} has no version {version}") from None
        return self._info(mv, model_aliases(self.client, self.name))

    def alias(self, alias: str) -> str | None:
        return model_aliases(self.client, self.name).get(alias)

    def routing(self) -> Routing:
        from mlflow.exceptions import MlflowException

        try:
            registered = self.client.get_registered_model(self.name)
        except MlflowException:
            return Routing(self.name, None, None, 0.0)
        aliases = {a: str(v) for a, v in (registered.aliases or {}).items()}
        challenger, shadow = aliases.get(CHALLENGER), aliases.get(SHADOW)
        percent = _float((registered.tags or {}).get(CANARY_TAG)) or 0.0
        shadow_percent = _float((registered.tags or {}).get(SHADOW_TAG)) or 0.0
        return Routing(self.name, aliases.get(CHAMPION), challenger,
                       percent if challenger else 0.0, shadow,
                       shadow_percent if shadow else 0.0)

    def compare(self, a: str | int, b: str | int) -> dict:
        va, vb = self.get(a), self.get(b)
        keys = [MAP50, MAP, "latency_p50_ms", "latency_p95_ms", "throughput_infer_per_s"]
        rows = {}
        for key in keys:
            x, y = _float(va.tags.get(key)), _float(vb.tags.get(key))
            rows[key] = {"a": x, "b": y,
                         "delta": None if x is None or y is None else round(y - x, 6)}
        same_eval = va.tags.get("eval_dataset_hash") == vb.tags.get("eval_dataset_hash")
        lineage = {k: {"a": va.tags.get(k), "b": vb.tags.get(k)}
                   for k in ("dataset_name", "eval_dataset", "source_checkpoint", "base",
                             "epochs", "imgsz")}
        return {"model": self.name, "a": va.version, "b": vb.version, "metrics": rows,
                "same_eval_dataset": same_eval, "lineage": lineage,
                "aliases": {"a": va.aliases, "b": vb.aliases}}

    # --- writes --------------------------------------------------------------------------------

    def set_alias(self, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        if alias in model_aliases(self.client, self.name):
            self.client.delete_registered_model_alias(self.name, alias)

    def set_canary_percent(self, percent: float) -> None:
        self.client.set_registered_model_tag(self.name, CANARY_TAG, f"{percent:g}")

    def set_shadow_percent(self, percent: float) -> None:
        self.client.set_registered_model_tag(self.name, SHADOW_TAG, f"{percent:g}")

    def route(self, alias: str, version: str | int, percent: float) -> None:
        """`version` as the CHALLENGER (a canary) or the SHADOW at `percent`. Two MLflow writes,
        the share first: a gateway reading between them sees the share without the version,
        which routes or mirrors nothing, never the version at the share it had before (0%
        after an earlier canary or shadow)."""
        share = {CHALLENGER: self.set_canary_percent, SHADOW: self.set_shadow_percent}[alias]
        share(percent)
        self.set_alias(alias, version)

    def tag_version(self, version: str | int, **tags) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def download(self, version: VersionInfo, artifact: str, dst: Path) -> Path:
        """A run artifact of the version (e.g. model/model.onnx) into `dst`."""
        import mlflow.artifacts

        return Path(mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=artifact, dst_path=str(dst),
            tracking_uri=self.store.tracking_uri))

    def serving_files(self, version: VersionInfo, dst: Path) -> dict[str, Path]:
        """The files a version serves from beside its ONNX, downloaded into `dst`: an INT8
        variant's OpenVINO IR (tag `serving_files`, control_plane/releases/quantize.py); none
        for a version that serves its ONNX."""
        names = [n for n in version.tags.get("serving_files", "").split(",") if n]
        return {name: self.download(version, f"{training.MODEL_ARTIFACT_DIR}/{name}", dst)
                for name in names}

    def eval_data_yaml(self) -> Path:
        """The dataset new versions are evaluated on: the champion's evaluation data when it is
        on this machine, else the bootstrap data."""
        champion = self.alias(CHAMPION)
        if champion:
            recorded = self.get(champion).tags.get("eval_data_yaml")
            if recorded and Path(recorded).exists():
                return Path(recorded)
        fallback = self.settings.bootstrap_dir / "data" / "data.yaml"
        if fallback.exists():
            return fallback
        raise RegistryError("no evaluation dataset: pass --eval-data a YOLO data.yaml (the "
                            "champion's evaluation data is not on this machine)")

    def register(self, checkpoint: Path, *, actor: str, eval_data: Path | None = None,
                 description: str = "", progress=None) -> VersionInfo:
        """Evaluate `checkpoint` on the evaluation dataset, export its serving ONNX, log both
        with its lineage to a new MLflow run and register it as the next version; `actor`
        goes to the audit log."""
        from mlflow.entities import Metric, Param

        from control_plane.datasets import synthetic_data
        from export.checkpoint import UnsafeCheckpoint
        from export.onnx_export import export_onnx, load_yolo

        report = progress or (lambda _stage: None)
        checkpoint = confined(checkpoint, self.settings.checkpoint_roots, "checkpoint")
        if not checkpoint.is_file():
            raise RegistryError(f"checkpoint {checkpoint} does not exist")
        data_yaml = (confined(eval_data, self.settings.checkpoint_roots, "evaluation data")
                     if eval_data else self.eval_data_yaml())
        if not data_yaml.is_file():
            raise RegistryError(f"evaluation data {data_yaml} does not exist")
        report("reading checkpoint")
        try:
            yolo = load_yolo(checkpoint)  # weights-only, an allow-list: export/checkpoint.py
        except UnsafeCheckpoint as exc:
            raise RegistryError(f"{checkpoint} refused: {exc}", refused="unsafe") from None
        except Exception as exc:  # an unreadable or foreign file: say so, register nothing
            raise RegistryError(f"{checkpoint} is not an Ultralytics checkpoint: {exc}") from None
        train_args = dict(getattr(yolo, "ckpt", {}).get("train_args", {}) or {})
        imgsz = int(train_args.get("imgsz") or yolo.overrides.get("imgsz") or 640)
        names = {int(k): str(v) for k, v in yolo.names.items()}
        eval_hash = synthetic_data.dataset_hash(data_yaml.parent, "val")
        eval_name = f"{dataset_label(data_yaml)}/val@{eval_hash[:8]}"
        digest = file_sha256(checkpoint)

        exp = experiment_id(self.client, self.store, REGISTRY_EXPERIMENT)
        run = self.client.create_run(exp, run_name=f"register-{checkpoint.stem}-{digest[:8]}",
                                     tags={"visionguard.kind": "register"})
        run_id = run.info.run_id
        try:
            params = {"checkpoint": str(checkpoint), "checkpoint_sha256": digest,
                      "imgsz": imgsz, "eval_data": str(data_yaml),
                      **{f"train.{k}": v for k, v in list(train_args.items())[:80]}}
            self.client.log_batch(run_id, params=[Param(k, str(v)[:500])
                                                  for k, v in params.items()])
            report("evaluating")
            scores = training.evaluate(checkpoint, data_yaml, imgsz=imgsz)
            final = {f"val_{k}": v for k, v in scores.items()}
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0)
                                                   for k, v in final.items()])
            report("exporting ONNX")
            with tempfile.TemporaryDirectory(prefix="vg-register-") as tmp, \
                    training._ultralytics_logging(False):
                exported = export_onnx(checkpoint, Path(tmp) / "model.onnx", imgsz=imgsz)
                shutil.copy2(checkpoint, Path(tmp) / "best.pt")
                self.client.log_artifact(run_id, str(Path(tmp) / "best.pt"),
                                         training.MODEL_ARTIFACT_DIR)
                self.client.log_artifact(run_id, str(exported.onnx_path),
                                         training.MODEL_ARTIFACT_DIR)
            report("registering")
            source = f"{self.client.get_run(run_id).info.artifact_uri}/" \
                     f"{training.MODEL_ARTIFACT_DIR}"
            tags = {
                MAP50: f"{final[MAP50]:.6f}", MAP: f"{final[MAP]:.6f}",
                "eval_dataset": eval_name, "eval_dataset_hash": eval_hash,
                "eval_data_yaml": str(data_yaml),
                "dataset_name": str(train_args.get("data", "unknown")),
                "source_checkpoint": f"{source}/best.pt", "original_path": str(checkpoint),
                "checkpoint_sha256": digest, "onnx": f"{source}/model.onnx",
                "class_names": json.dumps({str(k): v for k, v in sorted(names.items())}),
                "imgsz": imgsz, "stride": exported.stride,
                "epochs": train_args.get("epochs", ""), "base": train_args.get("model", ""),
                "train_args": json.dumps(train_args, sort_keys=True, default=str)[:5000],
            }
            version, _ = training.register_version(
                self.client, self.name, source=source, run_id=run_id, tags=tags,
                description=description or f"{checkpoint.name}: mAP50 {final[MAP50]:.3f}, "
                                           f"mAP50-95 {final[MAP]:.3f} on {eval_name}")
            self.client.set_terminated(run_id, "FINISHED")
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        info = self.get(version)
        AuditLog(self.settings.audit_file).record(
            actor, "register", model=self.name, version=info.version,
            checkpoint=str(checkpoint), mAP50=info.map50, mAP=info.map)
        return info
