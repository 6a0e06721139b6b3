"""Checkpoints are read without running code from them; ONNX files are checked before Triton.

The issue: a `.pt` whose pickle ran a shell command, registered with the API, ran it in the
control plane before being refused. Every malicious file here carries a real payload (`touch`
a marker file) and every test asserts the marker never appears.
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.checkpoint import (CheckpointError, TensorSpec, UnsafeCheckpoint, check_onnx,
                               load_checkpoint, yolo_from_checkpoint)
from export.onnx_export import export_onnx, load_yolo

# --- files: genuine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_pt(tmp_path_factory) -> Path:
    """yolov8n.yaml with seed 0, saved by YOLO.save (what `export` and the registry get)."""
    path = tmp_path_factory.mktemp("seeded") / "seeded.pt"
    load_yolo("yolov8n.yaml", seed=0).save(path)
    return path


def write_boxes_dataset(root: Path, imgsz: int = 64) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            image = np.full((imgsz, imgsz, 3), 40, np.uint8)
            x, y, w, h = (int(v) for v in rng.integers(5, imgsz // 2, 4))
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 200, 0), -1)
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), image)
            cx, cy = (x + w / 2) / imgsz, (y + h / 2) / imgsz
            (root / "labels" / split / f"{i}.txt").write_text(
                f"0 {cx} {cy} {w / imgsz} {h / imgsz}\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    return data


@pytest.fixture(scope="module")
def trained_pts(tmp_path_factory) -> dict[str, Path]:
    """A real one-epoch Ultralytics training at 64 px (seconds): its final best.pt, and the
    mid-training last.pt (EMA, optimizer state, train_args) copied when the trainer saves it."""
    import shutil

    import ultralytics.data.utils
    from ultralytics.models.yolo.detect import DetectionTrainer

    class OfflineTrainer(DetectionTrainer):
        def run_callbacks(self, event: str) -> None:  # Ultralytics' integrations (MLflow,
            for callback in self.callbacks.get(event, []):  # telemetry) write and call out
                module = getattr(callback, "__module__", "")
                if module == "ultralytics.utils.events" or (
                        module.startswith("ultralytics.utils.callbacks.")
                        and module != "ultralytics.utils.callbacks.base"):
                    continue
                callback(self)

    out = tmp_path_factory.mktemp("train")
    data = write_boxes_dataset(out / "data")
    yolo = load_yolo("yolov8n.yaml", seed=0)
    yolo.add_callback("on_model_save",
                      lambda trainer: shutil.copy(trainer.last, out / "resume.pt"))
    with pytest.MonkeyPatch.context() as mp:  # it fetches a plot font otherwise (offline)
        mp.setattr(ultralytics.data.utils, "check_font", lambda *a, **k: None)
        yolo.train(trainer=OfflineTrainer, data=str(data), epochs=1, imgsz=64, batch=4,
                   device="cpu", workers=0, amp=False, plots=False, val=True, seed=0,
                   project=str(out), name="run", exist_ok=True, verbose=False)
    return {"best": Path(yolo.trainer.best), "resume": out / "resume.pt"}


# --- files: malicious --------------------------------------------------------------------------


class ShellPayload:
    """Unpickling this runs `touch marker`: what the crafted checkpoint in the issue did."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ConstructorPayload:
    """Unpickles as `DetectionModel(cfg)`, whose activation Ultralytics passes to eval(): a
    class every genuine checkpoint needs, called with arguments of the pickle's choosing."""

    def __init__(self, cfg: dict, marker: Path):
        self.cfg = copy.deepcopy(cfg)
        self.cfg["activation"] = f"__import__('os').system('touch {marker}') or torch.nn.SiLU()"

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel, (self.cfg, 3, None, False)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / f"payload-ran-{os.getpid()}"
    yield path
    assert not path.exists(), "the payload ran"


def genuine_dict(path: Path) -> dict:
    """A checkpoint this test wrote itself, so loading it in full is safe."""
    return torch.load(path, map_location="cpu", weights_only=False)


def test_torch_saved_shell_payload_is_refused(tmp_path, marker):
    path = tmp_path / "evil.pt"
    torch.save(ShellPayload(marker), path)
    with pytest.raises(UnsafeCheckpoint, match=r"posix\.system.*nothing in it was run"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, for protocol 5
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_plain_pickle_shell_payload_is_refused(tmp_path, marker, protocol):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(ShellPayload(marker), protocol=protocol))
    with pytest.raises(UnsafeCheckpoint, match=r"posix\.system"):
        load_checkpoint(path)


def test_payload_hidden_in_a_genuine_checkpoint_is_refused(tmp_path, seeded_pt, marker):
    ckpt = genuine_dict(seeded_pt)
    ckpt["train_args"] = {"imgsz": 640, "notes": ShellPayload(marker)}
    path = tmp_path / "trojan.pt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpoint, match=r"posix\.system"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpoint):  # the export/registry entry point refuses it too
        load_yolo(path)


def test_allow_listed_class_called_with_arguments_is_refused(tmp_path, seeded_pt, marker):
    ckpt = genuine_dict(seeded_pt)
    ckpt["ema"] = ConstructorPayload(ckpt["model"].yaml, marker)
    path = tmp_path / "gadget.pt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpoint, match=r"calls ultralytics\.nn\.tasks\.DetectionModel"):
        load_checkpoint(path)
    assert not marker.exists()

    # Control: the same file through a plain allow-list of the globals it names (all of them
    # classes a genuine checkpoint needs) does run the payload, so the refusal above matters.
    import importlib

    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    classes = [getattr(importlib.import_module(n.rpartition(".")[0]), n.rpartition(".")[2])
               for n in names]
    control = marker.with_name("control-ran")  # the same file with its own marker
    ckpt["ema"] = ConstructorPayload(ckpt["model"].yaml, control)
    torch.save(ckpt, path)
    with torch.serialization.safe_globals(classes):
        torch.load(path, map_location="cpu", weights_only=True)
    assert control.exists()


@pytest.mark.parametrize("change", [
    {"activation": "__import__('os').system('touch {marker}')"},
    {"activation": "nn.SiLU(__import__('os').system('touch {marker}'))"},
    {"backbone_module": "torch_load"},  # a function in ultralytics.nn.tasks, not a layer
])
def test_architecture_ultralytics_would_evaluate_is_refused(tmp_path, seeded_pt, marker,
                                                            change):
    ckpt = genuine_dict(seeded_pt)
    spec = ckpt["model"].yaml
    if "activation" in change:
        spec["activation"] = change["activation"].format(marker=marker)
    else:
        spec["backbone"][0][2] = change["backbone_module"]
    path = tmp_path / "arch.pt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpoint, match="saved architecture"):
        load_checkpoint(path)


@pytest.mark.parametrize("activation", ["nn.LeakyReLU(0.1)", "torch.nn.ReLU()", None])
def test_literal_activations_are_accepted(tmp_path, seeded_pt, activation):
    ckpt = genuine_dict(seeded_pt)
    ckpt["model"].yaml["activation"] = activation
    path = tmp_path / "act.pt"
    torch.save(ckpt, path)
    assert load_checkpoint(path)["model"].yaml["activation"] == activation


# --- genuine checkpoints -----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["seeded", "best", "resume"])
def test_genuine_checkpoints_load_as_ultralytics_loads_them(seeded_pt, trained_pts, which):
    from ultralytics import YOLO

    path = seeded_pt if which == "seeded" else trained_pts[which]
    before = set(torch.serialization.get_safe_globals())
    safe = yolo_from_checkpoint(path)
    assert set(torch.serialization.get_safe_globals()) == before  # nothing left registered
    trusted = YOLO(str(path))  # full unpickling: fine for a file this test wrote
    assert type(safe) is type(trusted) and safe.task == trusted.task == "detect"
    assert safe.overrides == trusted.overrides and safe.names == trusted.names
    assert safe.ckpt.keys() == trusted.ckpt.keys()
    a, b = safe.model.state_dict(), trusted.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(safe.model(x)[0], trusted.model(x)[0])
    if which == "resume":  # the trainer's full dict: EMA, optimizer state, arguments
        assert safe.ckpt["optimizer"] and safe.ckpt["train_args"]["epochs"] == 1


def test_legacy_value_types_in_a_checkpoint_load(tmp_path, seeded_pt):
    """Values older Ultralytics versions pickled: numpy scalars, IterableSimpleNamespace, Path."""
    from ultralytics.utils import IterableSimpleNamespace

    ckpt = genuine_dict(seeded_pt)
    ckpt["train_metrics"] = {"fitness": np.float64(0.25), "loss": np.float32(1.5)}
    ckpt["train_args"] = {"imgsz": 320, "save_dir": Path("/runs/detect/train")}
    ckpt["model"].args = IterableSimpleNamespace(imgsz=320)
    path = tmp_path / "legacy.pt"
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded["train_metrics"]["fitness"] == np.float64(0.25)
    assert loaded["train_args"]["save_dir"] == Path("/runs/detect/train")
    assert yolo_from_checkpoint(path).overrides["imgsz"] == 320


def test_checkpoint_exports_the_outputs_of_its_weights(seeded_pt, tmp_path):
    """export_onnx on a .pt (now loaded weights-only) gives what the model computes when
    Ultralytics loads the same file itself, through the serving contract (uint8 NHWC)."""
    from ultralytics import YOLO

    exported = export_onnx(seeded_pt, tmp_path / "model.onnx", imgsz=64)
    signature = check_onnx(exported.onnx_path)
    assert signature.inputs == (TensorSpec("images", "UINT8", ("batch", "height", "width", 3)),)
    assert [o.name for o in signature.outputs] == ["raw"]
    assert len(exported.names) == 80 and exported.stride == 32

    image = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    (raw,) = session.run(None, {"images": image})
    trusted = YOLO(str(seeded_pt)).model.eval()
    with torch.no_grad():
        expected = trusted(torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255)[0]
    np.testing.assert_allclose(raw, expected.numpy(), rtol=1e-3, atol=1e-3)


# --- unusable files ----------------------------------------------------------------------------

def write_case(tmp_path: Path, case: str, seeded_pt: Path) -> Path:
    path = tmp_path / f"{case}.pt"
    if case == "missing":
        return path
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "text":
        path.write_text("model: yolov8n\n" * 20)
    elif case == "truncated":
        path.write_bytes(seeded_pt.read_bytes()[:100_000])
    elif case == "foreign_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a checkpoint")
    elif case == "state_dict":
        torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), path)
    elif case == "not_detection":
        torch.save({"model": torch.nn.Conv2d(3, 8, 3)}, path)
    return path


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "garbage", "text",
                                  "truncated", "foreign_zip", "state_dict", "not_detection"])
def test_unusable_files_get_a_checkpoint_error(tmp_path, seeded_pt, case):
    path = write_case(tmp_path, case, seeded_pt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert type(info.value) is CheckpointError  # damaged or foreign, not refused as unsafe
    assert str(path) in str(info.value)
    assert "weights_only=False" not in str(info.value)  # torch's advice is not passed on


def test_oversized_checkpoint_is_refused_before_reading(seeded_pt):
    with pytest.raises(CheckpointError, match="over the 1000-byte limit"):
        load_checkpoint(seeded_pt, max_bytes=1000)


# --- ONNX --------------------------------------------------------------------------------------

def matmul_model(domain: str = "") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def with_external_location(model_path: Path, location: str, out: Path) -> Path:
    model = onnx.load(str(model_path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(out))
    return out


def test_valid_onnx_passes_with_its_signature(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(), str(path))
    assert check_onnx(path).inputs == (TensorSpec("x", "FLOAT", ("n", 4)),)
    external = tmp_path / "ext" / "m.onnx"  # external data beside the model is fine
    external.parent.mkdir()
    onnx.save(matmul_model(), str(external), save_as_external_data=True, location="m.bin",
              size_threshold=0)
    assert check_onnx(external).outputs == (TensorSpec("y", "FLOAT", ("n", 4)),)


def test_custom_domain_operator_is_refused(tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(matmul_model(domain="com.example.evil"), str(path))
    with pytest.raises(CheckpointError, match=r"com\.example\.evil::MatMul"):
        check_onnx(path)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, how):
    folder = tmp_path / "model"
    folder.mkdir()
    source = folder / "m.onnx"
    onnx.save(matmul_model(), str(source), save_as_external_data=True, location="m.bin",
              size_threshold=0)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((folder / "m.bin").read_bytes())
    if how == "dotdot":
        path = with_external_location(source, "../secret.bin", folder / "evil.onnx")
    elif how == "absolute":
        path = with_external_location(source, str(secret), folder / "evil.onnx")
    else:
        (folder / "link.bin").symlink_to(secret)
        path = with_external_location(source, "link.bin", folder / "evil.onnx")
    with pytest.raises(CheckpointError, match="outside"):
        check_onnx(path)


@pytest.mark.parametrize("content", [b"", b"\x00\xff" * 64, b"not an onnx file\n"])
def test_unreadable_onnx_gets_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        check_onnx(path)


def test_no_load_while_the_real_model_class_is_registered_process_wide(seeded_pt):
    """Ultralytics' ULTRALYTICS_SAFE_LOAD registers the real DetectionModel process-wide;
    torch would then pick it or our stand-in at random, so nothing is loaded meanwhile."""
    from ultralytics.nn.tasks import DetectionModel

    with torch.serialization.safe_globals([DetectionModel]):
        with pytest.raises(CheckpointError, match="registered process-wide"):
            load_checkpoint(seeded_pt)
    assert load_checkpoint(seeded_pt)["model"] is not None
