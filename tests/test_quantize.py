"""INT8 through the release path: `models quantize` over HTTP, the variant's lineage in MLflow,
its promotion through the gates (accuracy against the FP32 parent), served by Triton behind a
real gateway under the same tensor contract, and the refusals.

Beside the session's stack: its Triton serves a model of this module's own (`int8-detector`,
its own MLflow store and runtime directory), followed by one control plane and one gateway of
our own, as tests/test_canary_analysis.py does. The detector is the suite's trained one; the
version's lineage names a generated training set (its calibration data), and its evaluation
set is another seed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

MODEL = "int8-detector"
CALIBRATION = 40


@dataclass
class Own:
    settings: object
    registry: object
    env: dict[str, str]
    tokens: dict[str, str]
    parent: str
    train_data: Path
    gateway: str


@pytest.fixture(scope="module")
def own(stack, trained_checkpoint, tmp_path_factory):
    from control_plane.auth import TokenStore
    from control_plane.datasets.synthetic_data import generate_dataset
    from control_plane.releases.fleet import TritonControl
    from control_plane.releases.promoter import serve_champion
    from control_plane.releases.registry import Registry
    from control_plane.settings import Settings
    from control_plane.stack.supervisor import Supervisor, wait_http_ok
    from tests.conftest import free_ports, gateway_process

    tmp = tmp_path_factory.mktemp("int8")
    (control_port,) = free_ports(1)
    runtime, s = tmp / "runtime", stack.settings
    env = {**os.environ, "VG_RUNTIME_DIR": str(runtime), "VG_MODEL_NAME": MODEL,
           "VG_MODEL_REPOSITORY": str(s.model_repository),
           "VG_TRITON_HTTP_PORT": str(s.triton_http_port),
           "VG_TRITON_GRPC_PORT": str(s.triton_grpc_port), "VG_CONTROL_PORT": str(control_port),
           "VG_ROUTING_DRAIN_S": "1", "VG_DRIFT_CHECK_INTERVAL_S": "0",
           "VG_LOGS_INDEX_INTERVAL_S": "0", "VG_SCHEDULE_ENABLED": "0"}
    settings = replace(Settings(runtime_dir=runtime, model_repository=s.model_repository),
                       model_name=MODEL, triton_http_port=s.triton_http_port,
                       triton_grpc_port=s.triton_grpc_port, control_port=control_port,
                       routing_drain_s=1.0)
    registry = Registry(settings)
    eval_data = generate_dataset(tmp / "eval", n_train=0, n_val=40, imgsz=256, seed=7)
    train_data = generate_dataset(tmp / "train", n_train=48, n_val=0, imgsz=256, seed=3)
    parent = registry.register(trained_checkpoint, actor="test", eval_data=eval_data).version
    # The lineage a checkpoint trained on `train_data` records (Ultralytics' `data` argument).
    registry.tag_version(parent, dataset_name=str(train_data))
    serve_champion(settings)
    triton = TritonControl(settings)
    triton.load(MODEL)
    assert triton.wait_ready(MODEL, int(parent), 120)[0]
    store = TokenStore(settings.tokens_file)
    tokens = {role: store.create(f"test-{role}", [role])
              for role in ("release", "gateway", "viewer")}
    try:
        with gateway_process(stack, tmp / "gateway", model_name=MODEL,
                             control_url=settings.control_url, control_token=tokens["gateway"],
                             routing_poll_s="0.5") as gateway, \
                Supervisor(tmp / "control") as supervisor:
            child = supervisor.start("control-plane", [
                sys.executable, "-m", "control_plane", "serve", "control-plane"], env)
            wait_http_ok(f"{settings.control_url}/healthz", child.proc, 90, "control plane")
            yield Own(settings, registry, env, tokens, parent, train_data, gateway)
    finally:
        import tritonclient.http as httpclient

        httpclient.InferenceServerClient(f"127.0.0.1:{s.triton_http_port}").unload_model(MODEL)
        shutil.rmtree(Path(s.model_repository) / MODEL, ignore_errors=True)


def _post(own: Own, path: str, role: str = "release", **body) -> httpx.Response:
    return httpx.post(f"{own.settings.control_url}{path}", json=body, timeout=600,
                      headers={"authorization": f"Bearer {own.tokens[role]}"})


@pytest.fixture(scope="module")
def variant(own) -> dict:
    """Version `parent` quantised over HTTP with the release token (a viewer is refused)."""
    assert _post(own, f"/v1/models/{own.parent}/quantize", role="viewer").status_code == 403
    r = _post(own, f"/v1/models/{own.parent}/quantize", calibration_images=CALIBRATION)
    assert r.status_code == 201, r.text
    return r.json()


def test_quantize_registers_an_int8_variant_of_its_parent(own, variant):
    from mlflow.tracking import MlflowClient

    tags = variant["tags"]
    assert int(variant["version"]) == int(own.parent) + 1
    assert variant["aliases"] == [], "a variant never becomes the champion by itself"
    assert tags["variant"] == "int8" and tags["parent_version"] == own.parent
    assert tags["quantization"] == "nncf-ptq" and tags["quantization_format"] == "openvino-ir"
    assert tags["calibration_images"] == str(CALIBRATION)
    assert (tags["calibration_source"], tags["calibration_kind"]) == (
        str(own.train_data), "training"), "calibrated on the data the parent was trained on"
    parent = own.registry.get(own.parent)
    for key in ("class_names", "imgsz", "stride", "eval_dataset_hash", "eval_data_yaml"):
        assert tags[key] == parent.tags[key], key
    assert "avx512_vnni" in tags["quantized_on"] or "amx_int8" in tags["quantized_on"] or \
        "no VNNI" in tags["quantized_on"]
    # Both scored by the served path on the parent's evaluation data; the list's mAP is on the
    # parent's scale, less what INT8 lost.
    int8, fp32 = float(tags["int8_served_mAP50-95"]), float(tags["parent_served_mAP50-95"])
    assert 0 < int8 and 0 < fp32
    assert float(tags["val_mAP50-95"]) == pytest.approx(parent.map - (fp32 - int8), abs=1e-5)
    artifacts = {f.path for f in MlflowClient(own.registry.store.tracking_uri).list_artifacts(
        variant["run_id"], "model")}
    assert artifacts == {"model/model.onnx", "model/model.xml", "model/model.bin"}
    audit = [json.loads(line) for line in own.settings.audit_file.read_text().splitlines()]
    assert any(e["action"] == "quantize" and e["version"] == variant["version"]
               and e["actor"] == "token:test-release" for e in audit)


def test_the_variant_quantises_each_activation_with_its_convolution(own, variant, tmp_path):
    """Each SiLU is one Swish in the IR (OpenVINO fuses it into the INT8 convolution before
    it); read from ONNX unfused, it was a Sigmoid and a Mul that ran in floating point between
    INT8 convolutions. The head's class Sigmoid is the one Sigmoid left, kept in FP32."""
    import xml.etree.ElementTree as ET

    from mlflow.tracking import MlflowClient

    xml = MlflowClient(own.registry.store.tracking_uri).download_artifacts(
        variant["run_id"], "model/model.xml", str(tmp_path))
    layers = ET.parse(xml).getroot().iter("layer")
    types = [(layer.get("type"), layer.get("name")) for layer in layers]
    swish = [name for kind, name in types if kind == "Swish"]
    sigmoid = [name for kind, name in types if kind == "Sigmoid"]
    convolutions = [name for kind, name in types if kind == "Convolution"]
    assert len(swish) >= len(convolutions) // 2, (len(swish), len(convolutions))
    assert len(sigmoid) == 1 and "/model." in sigmoid[0], sigmoid
    assert sum(kind == "FakeQuantize" for kind, _ in types) >= len(convolutions)


@pytest.fixture(scope="module")
def promoted(own, variant) -> dict:
    """The variant promoted through the release gates: Triton then serves it beside its
    parent."""
    from control_plane.releases.promoter import Promoter

    return Promoter(own.settings, actor="test", registry=own.registry).promote(
        variant["version"]).as_dict()


def test_the_variant_is_promoted_through_the_gates_and_serves_the_same_contract(
        own, variant, promoted, bus_jpg):
    from control_plane.releases.fleet import TritonControl
    from control_plane.releases.golden import golden_images

    v2 = variant["version"]
    steps = {s["step"]: s for s in promoted["steps"]}
    gate = steps["gate_accuracy"]
    assert gate["parent"] == own.parent and gate["max_drop_points"] == 1.0
    assert gate["drop_points"] == pytest.approx(
        (gate["parent_fp32_mAP50-95"] - gate["int8_mAP50-95"]) * 100, abs=0.02)
    assert gate["drop_points"] <= 1.0
    assert json.loads(own.registry.get(v2).tags["gate_accuracy"])["parent"] == own.parent
    parity = steps["smoke_parity"]
    assert parity["tolerance"] == own.settings.parity_int8_rtol
    assert 0 < parity["max_rel_diff"] <= parity["tolerance"], \
        "INT8 serves (its output is not the FP32 parent's), within the INT8 tolerance"
    folder = Path(own.settings.model_repository) / MODEL / v2
    assert {"model.xml", "model.bin", "model.onnx"} <= {p.name for p in folder.iterdir()}
    # Same tensors from Triton for both versions: shapes equal, boxes close.
    server = TritonControl(own.settings).servers[0]
    name, rgb = golden_images(256, 32)[0]
    dets1, raw1 = server.infer_raw(MODEL, int(own.parent), rgb)
    dets2, raw2 = server.infer_raw(MODEL, int(v2), rgb)
    assert raw1.shape == raw2.shape and dets2.shape[1] == dets1.shape[1] == 6
    assert not np.array_equal(raw1, raw2)
    # The gateway follows the routing to the variant and answers as before.
    import time

    deadline = time.monotonic() + 20
    while True:
        r = httpx.post(f"{own.gateway}/v1/detect", content=bus_jpg,
                       headers={"content-type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
        if r.json()["model"]["version"] == v2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    body = r.json()
    assert body["model"]["version"] == v2
    assert isinstance(body["detections"], list)


def test_the_variant_serves_from_static_shapes_compiled_in_the_background(
        own, variant, promoted, stack):
    """model.py compiles the IR for each image size Triton delivers in a background thread
    while the dynamic-shape model serves that size: a lone image on a latency model, a batch's
    images in parallel on a two-stream one. Once each compile is logged, Triton's answer is the
    one OpenVINO gives from the IR directly."""
    import time

    import openvino as ov
    import tritonclient.http as httpclient

    from control_plane.releases.fleet import TritonControl
    from control_plane.releases.golden import golden_images

    v2 = variant["version"]
    server = TritonControl(own.settings).servers[0]
    _, rgb = golden_images(256, 32)[0]
    batch = np.ascontiguousarray(np.stack([rgb, rgb[:, ::-1]]))
    log = stack.settings.runtime_dir / "logs" / "triton.log"

    def infer_batch() -> np.ndarray:
        images = httpclient.InferInput("images", list(batch.shape), "UINT8")
        images.set_data_from_numpy(batch)
        flag = httpclient.InferInput("return_raw", [2, 1], "BOOL")
        flag.set_data_from_numpy(np.array([[True], [True]]))
        return server.client.infer(MODEL, [images, flag], model_version=str(v2)).as_numpy("raw")

    def served_once_compiled(mode: str, infer):
        line = f"model.xml: compiled for 1x{rgb.shape[0]}x{rgb.shape[1]}x3 ({mode})"
        deadline = time.monotonic() + 90
        while line not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"no '{line}' in {log}"
            infer()  # served meanwhile; the second request of a size starts its compile
            time.sleep(0.5)
        return infer()

    lone = served_once_compiled("latency", lambda: server.infer_raw(MODEL, int(v2), rgb)[1])
    batched = served_once_compiled("2 streams", infer_batch)
    core = ov.Core()
    ir = Path(own.settings.model_repository) / MODEL / v2 / "model.xml"
    direct = core.compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(batch)[0]
    tolerance = 1e-3 * float(np.abs(direct).max())
    assert lone.shape == direct[0].shape and batched.shape == direct.shape
    # A served answer is held to 0.1% of the output range of OpenVINO's answer from the IR
    # compiled here. Which kernels OpenVINO picks for a static shape varies between processes
    # (the lone image's answer matched the dynamic model's in seven suite runs of eight and the
    # static latency model's compiled here in the eighth: 0.35% apart on 1.6% of the values;
    # INT8 activations rounded the other way), so each served answer must match one of the
    # two (static: the served configuration, latency for a lone image, two streams for a
    # batch), and the dynamic model's within 1% whichever it matched.
    model = core.read_model(str(ir))
    model.reshape({model.input(0).get_any_name(): [1, *rgb.shape]})
    latency = core.compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2,
        "INFERENCE_PRECISION_HINT": "f32"})
    streams = core.compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", "INFERENCE_NUM_THREADS": 2,
        "INFERENCE_PRECISION_HINT": "f32"})

    def matches_one(answer, references: dict) -> None:
        gaps = {name: float(np.abs(answer - ref).max()) for name, ref in references.items()}
        assert min(gaps.values()) <= tolerance, (
            f"the answer matches no OpenVINO configuration of the IR within {tolerance:.3g}: "
            f"max differences {gaps}")
        np.testing.assert_allclose(answer, references["dynamic"], rtol=0, atol=10 * tolerance)

    matches_one(lone, {"static latency": latency(batch[:1])[0][0], "dynamic": direct[0]})
    matches_one(batched, {"static streams": np.concatenate(
        [streams(batch[i:i + 1])[0] for i in range(2)]), "dynamic": direct})


def test_the_accuracy_gate_rejects_a_variant_that_loses_more_than_allowed(own, variant):
    from control_plane.releases.gates import CandidateRejected, GateContext, accuracy

    candidate = own.registry.get(variant["version"])
    lost = float(candidate.tags["parent_served_mAP50-95"]) - float(
        candidate.tags["int8_served_mAP50-95"])
    strict = replace(own.settings, gate_int8_max_map_drop=lost * 100 - 0.01)
    ctx = GateContext(strict, own.registry, MODEL, Path(), None, None, Path(), load=None)
    with pytest.raises(CandidateRejected) as refused:
        accuracy(candidate, ctx)
    assert "FP32 parent" in refused.value.message
    assert refused.value.details["drop_points"] == pytest.approx(lost * 100, abs=1e-3)


def _register_like(own: Own, **tags) -> str:
    """A version carrying the parent's files with other lineage tags (no evaluation)."""
    from control_plane.training import train as training

    parent = own.registry.get(own.parent)
    source = parent.tags["onnx"].rsplit("/", 1)[0]
    version, _ = training.register_version(
        own.registry.client, MODEL, source=source, run_id=parent.run_id,
        tags={**{k: v for k, v in parent.tags.items() if k != "dataset_name"}, **tags},
        claim_champion=False)
    return version


def test_bad_quantize_requests_get_clear_errors(own, variant, tmp_path):
    errors = {}
    gone_path = _register_like(own, dataset_name=str(tmp_path / "gone" / "data.yaml"))
    gone_ref = _register_like(own, dataset="never-imported@0123abcd")
    for label, version, body in (
            ("unknown", "999", {}),
            ("variant", variant["version"], {}),
            ("too_few", own.parent, {"calibration_images": 5}),
            ("gone_path", gone_path, {}),
            ("gone_ref", gone_ref, {})):
        r = _post(own, f"/v1/models/{version}/quantize", **body)
        errors[label] = (r.status_code, r.json()["error"])
    assert errors["unknown"][0] == 404 and "no version 999" in errors["unknown"][1]["message"]
    assert errors["variant"][:1] == (409,)
    assert errors["variant"][1]["code"] == "already_a_variant"
    assert errors["variant"][1]["parent"] == own.parent
    assert errors["too_few"][0] == 422
    assert errors["too_few"][1]["code"] == "too_few_calibration_images"
    assert errors["too_few"][1]["minimum"] == 32
    for label in ("gone_path", "gone_ref"):
        status, error = errors[label]
        assert (status, error["code"]) == (404, "calibration_dataset_gone"), error
    assert "gone" in errors["gone_path"][1]["dataset"]
    assert errors["gone_ref"][1]["dataset"] == "never-imported@0123abcd"
    # Nothing was registered by the refusals.
    assert [v.version for v in own.registry.versions()][-1] == gone_ref
    # The CLI says the same and exits non-zero.
    cli = subprocess.run([sys.executable, "-m", "control_plane", "models", "quantize",
                          variant["version"]], env=own.env, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode != 0
    assert "variant" in cli.stdout + cli.stderr


def test_calibration_falls_back_to_evaluation_data_only_without_training_data(own, tmp_path):
    from control_plane.datasets.synthetic_data import generate_dataset
    from control_plane.releases.quantize import TooFewCalibrationImages, calibration_set

    parent = own.registry.get(own.parent)
    chosen = calibration_set(own.settings, parent, CALIBRATION)
    assert (chosen.kind, chosen.source, len(chosen.images)) == (
        "training", str(own.train_data), CALIBRATION)
    assert all(str(p).startswith(str(own.train_data.parent)) for p in chosen.images)
    bare = own.registry.get(_register_like(own))  # no training data recorded
    fallback = calibration_set(own.settings, bare, CALIBRATION)
    assert (fallback.kind, fallback.source) == ("evaluation", parent.tags["eval_data_yaml"])
    small = generate_dataset(tmp_path / "small", n_train=5, n_val=0, imgsz=64, seed=1)
    few = own.registry.get(_register_like(own, dataset_name=str(small)))
    with pytest.raises(TooFewCalibrationImages) as refused:
        calibration_set(own.settings, few, CALIBRATION)
    assert refused.value.details["found"] == 5 and refused.value.status_code == 422
