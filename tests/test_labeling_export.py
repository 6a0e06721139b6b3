"""`visionguard data export-for-labeling` (control_plane/datasets/labeling.py) and the frames a
real gateway samples for it (issue 14, the labelling-export contract).

The export runs on frames the real sampler wrote to a local folder and to moto's standalone S3
server (a real HTTP S3 API; no MinIO server installs on these machines). The integration
tests start a second real gateway on the shared stack with sampling on: frames it writes are
exported by the CLI and the COCO file is loaded with faster-coco-eval's COCO; a gateway whose
object store is down still answers every request, and counts the dropped frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from control_plane.datasets.labeling import (EXPORT_FORMAT, EmptyExport, ExportExists,
                                             export_for_labeling, parse_since)
from control_plane.settings import Settings
from tests.conftest import ROOT, free_ports, gateway_process
from tests.test_frame_sampling import CREDS, detections, jpeg, settings as gw_settings
from tracker_service.frame_sampler import DriftFlag, FrameSampler
from tracker_service.frame_store import LocalFrameStore, S3FrameStore
from tracker_service.metrics import GatewayMetrics


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    (port,) = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def sample(store, frames, **overrides) -> None:
    """Frames through the real sampler into `store`; `drift` flagged for the drift reason."""
    flag = DriftFlag(gw_settings())
    flag.flagged = overrides.pop("drift", False)
    sampler = FrameSampler(gw_settings(**overrides), GatewayMetrics(), store=store, drift=flag)
    sampler.start()
    try:
        for data, d, stream in frames:
            assert sampler.offer(data, d, stream) is not None
        await asyncio.wait_for(sampler.settled(), 20)
    finally:
        await sampler.close()


def check_export(out: Path, settings: Settings, n: int) -> dict:
    """The folder follows the contract; returns the manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    coco = json.loads((out / "annotations.json").read_text())
    assert manifest["format"] == EXPORT_FORMAT and len(manifest["export_id"]) == 32
    assert len(manifest["images"]) == len(coco["images"]) == n
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(i["file_name"]).name for i in manifest["images"])
    for entry, image in zip(manifest["images"], coco["images"]):
        data = (out / entry["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["file_name"] == image["file_name"] == f"images/{entry['sha256'][:16]}.jpg"
        assert (entry["width"], entry["height"]) == (image["width"], image["height"])
    assert coco["categories"] == [{"id": i + 1, "name": c}
                                  for i, c in enumerate(manifest["classes"])]
    copy = settings.labeling_exports_dir / f"{manifest['export_id']}.json"
    assert json.loads(copy.read_text()) == manifest
    assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]
    return manifest


async def test_export_selects_writes_and_refuses(tmp_path):
    settings = Settings(runtime_dir=tmp_path / "runtime")
    store = LocalFrameStore(settings.frames_dir)
    frames = [jpeg(200 + i) for i in range(5)]
    await sample(store, [(d, detections(i, (0.9, 0.3), (1, 0)), "cam-1")
                         for d, i in frames[:2]], drift=True, frames_drift_rate=1.0)
    for d, i in frames[2:4]:  # one after the other: frames[3] is the newer
        await sample(store, [(d, detections(i, (0.4,), (2,)), "cam-2")],
                     frames_uniform_rate=0.0)  # 0.4 is in the uncertain band
    await sample(store, [(frames[4][0], detections(frames[4][1], (), ()), None)])

    out = tmp_path / "export"
    result = export_for_labeling(settings, out)
    assert (result.images, result.annotations) == (5, 6)
    assert result.by_reason == {"drift": 2, "uncertain": 2, "uniform": 1}
    manifest = check_export(out, settings, 5)
    assert manifest["model"] == {"name": "detector", "version": "3"}
    assert manifest["classes"] == ["circle", "square", "triangle"]
    assert [i["reason"] for i in manifest["images"]] == ["drift"] * 2 + ["uncertain"] * 2 + [
        "uniform"]
    assert [i["stream_id"] for i in manifest["images"]] == ["cam-1"] * 2 + ["cam-2"] * 2 + [None]
    coco = json.loads((out / "annotations.json").read_text())
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert first[0] == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [4.0, 5.0, 26.0, 35.5],
                        "area": 923.0, "iscrowd": 0, "score": pytest.approx(0.9)}
    # faster-coco-eval's COCO reads it as labelling tools do.
    from faster_coco_eval import COCO

    loaded = COCO(str(out / "annotations.json"))
    assert len(loaded.getImgIds()) == 5 and len(loaded.getAnnIds()) == 6
    assert loaded.loadCats(3)[0]["name"] == "triangle"
    tasks = json.loads((out / "label_studio.json").read_text())
    box = tasks[0]["predictions"][0]["result"][0]
    assert box["value"]["x"] == pytest.approx(100 * 4 / 64)
    assert box["value"]["rectanglelabels"] == ["square"]

    # Selections: by reason, the newest N, since a time.
    one = export_for_labeling(settings, tmp_path / "uncertain", reason="uncertain", limit=1)
    m = check_export(tmp_path / "uncertain", settings, 1)
    assert m["images"][0]["sha256"] == hashlib.sha256(frames[3][0]).hexdigest()
    assert one.by_reason["uncertain"] == 1
    # Nothing matches: a clear error, no folder, no staging folder, no manifest copy.
    copies = sorted(settings.labeling_exports_dir.iterdir())
    for kwargs in ({"since": datetime.now(timezone.utc) + timedelta(minutes=1)},
                   {"reason": "drift", "since": parse_since("1h") + timedelta(hours=2)}):
        with pytest.raises(EmptyExport, match="no sampled frames match"):
            export_for_labeling(settings, tmp_path / "empty", **kwargs)
        assert not (tmp_path / "empty").exists()
    assert sorted(settings.labeling_exports_dir.iterdir()) == copies
    with pytest.raises(ExportExists):
        export_for_labeling(settings, out)
    # A record whose image bytes changed is left out, not exported under a wrong hash.
    victim = next(k for k, _, _ in store.list() if k.endswith(".jpg"))
    store.put(victim, b"\xff\xd8\xff tampered")
    result = export_for_labeling(settings, tmp_path / "after-tamper")
    assert result.images == 4 and result.skipped == {"hash_mismatch": 1}


def test_parse_since():
    now = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
    assert parse_since("10m", now) == now - timedelta(minutes=10)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2026-12-03T10:00:00Z", now) == now - timedelta(hours=2)
    assert parse_since("2026-12-03T10:00:00", now) == now - timedelta(hours=2)
    from control_plane.errors import ControlPlaneError

    with pytest.raises(ControlPlaneError, match="duration"):
        parse_since("yesterday", now)


async def test_export_from_s3(s3_server, tmp_path):
    store = S3FrameStore(s3_server, "frames-export", CREDS)
    frames = [jpeg(300 + i) for i in range(2)]
    await sample(store, [(d, detections(i), "cam-9") for d, i in frames])
    settings = Settings(runtime_dir=tmp_path / "runtime", frames_s3_endpoint=s3_server,
                        frames_s3_bucket="frames-export", frames_s3_access_key="test-access",
                        frames_s3_secret_key="test-secret")
    result = export_for_labeling(settings, tmp_path / "out")
    assert result.images == 2
    check_export(tmp_path / "out", settings, 2)
    assert not (tmp_path / "runtime" / "frames").exists()  # read from S3, not locally


# --- a real gateway ---------------------------------------------------------------------------

def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                   if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.integration
def test_gateway_samples_frames_and_the_cli_exports_them(stack, tmp_path, shapes_images,
                                                         bus_jpg):
    runtime = tmp_path / "runtime"
    frames_dir = runtime / "frames"
    images = [p.read_bytes() for p in shapes_images[:4]] + [bus_jpg]
    with gateway_process(stack, tmp_path / "gw", frames_sampling="1",
                         frames_dir=str(frames_dir), frames_uniform_rate="1",
                         frames_per_stream_per_min="6000") as url:
        for i, data in enumerate(images[:3]):
            r = httpx.post(f"{url}/v1/detect", content=data,
                           headers={"content-type": "image/jpeg"}, timeout=60)
            assert r.status_code == 200, r.text
        for i, data in enumerate(images[3:]):
            r = httpx.post(f"{url}/v1/streams/cam-1/frames?frame={i}", content=data,
                           headers={"content-type": "image/jpeg"}, timeout=60)
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while len(list(frames_dir.rglob("*.json"))) < len(images):
            assert time.monotonic() < deadline, list(frames_dir.rglob("*"))
            time.sleep(0.2)
        assert metric(url, "visionguard_gateway_frames_sampled_total", reason="uniform") == 5
        stored = metric(url, "visionguard_gateway_frames_stored_bytes_total")
    records = [json.loads(p.read_text()) for p in frames_dir.rglob("*.json")]
    assert stored == sum(p.stat().st_size for p in frames_dir.rglob("*") if p.is_file())
    by_sha = {r["sha256"]: r for r in records}
    for data in images:  # each posted JPEG, unchanged, beside its record
        r = by_sha[hashlib.sha256(data).hexdigest()]
        day = r["time"][:10]
        assert (frames_dir / "frames" / day / f"{r['sha256']}.jpg").read_bytes() == data
        assert r["reason"] == "uniform" and r["model"] == "detector" and r["model_version"]
        assert len(r["classes"]) == 80 and r["width"] > 0
        for d in r["detections"]:
            assert 0 <= d["box"][0] <= d["box"][2] <= r["width"] + 1
            assert d["class_name"] == r["classes"][d["class_id"]]
    assert by_sha[hashlib.sha256(bus_jpg).hexdigest()]["stream_id"] == "cam-1"
    assert by_sha[hashlib.sha256(images[0]).hexdigest()]["stream_id"] is None

    env = {**os.environ, "VG_RUNTIME_DIR": str(runtime)}
    env.pop("VG_GATEWAY_FRAMES_DIR", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "control_plane", "data",
                               "export-for-labeling", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    done = cli("--out", str(tmp_path / "export"), "--since", "10m", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == 5 and summary["by_reason"]["uniform"] == 5
    check_export(tmp_path / "export", Settings(runtime_dir=runtime), 5)
    from faster_coco_eval import COCO

    coco = COCO(str(tmp_path / "export" / "annotations.json"))
    assert len(coco.getImgIds()) == 5 and len(coco.getCatIds()) == 80
    done = cli("--out", str(tmp_path / "none"), "--reason", "drift")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no sampled frames match" in done.stdout + done.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.integration
def test_object_store_down_requests_unaffected(stack, tmp_path, shapes_images):
    (port,) = free_ports(1)  # no S3 server listens there
    images = [p.read_bytes() for p in shapes_images[:3]]
    with gateway_process(stack, tmp_path / "gw", frames_sampling="1",
                         frames_s3_endpoint=f"http://127.0.0.1:{port}",
                         frames_s3_bucket="frames", frames_s3_access_key="k",
                         frames_s3_secret_key="s", frames_uniform_rate="1",
                         frames_per_stream_per_min="6000", frames_backoff_s="30") as url:
        for data in images * 2:
            r = httpx.post(f"{url}/v1/detect", content=data,
                           headers={"content-type": "image/jpeg"}, timeout=60)
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 20
        while True:
            failed = metric(url, "visionguard_gateway_frames_dropped_total", cause="store_error")
            paused = metric(url, "visionguard_gateway_frames_dropped_total", cause="paused")
            queued = metric(url, "visionguard_gateway_frames_dropped_total", cause="queue_full")
            if failed + paused + queued == 6:
                break
            assert time.monotonic() < deadline, (failed, paused, queued)
            time.sleep(0.2)
        assert failed >= 1 and paused >= 1
        assert metric(url, "visionguard_gateway_frames_stored_bytes_total") == 0
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
