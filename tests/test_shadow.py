"""Shadow traffic (issue 15 item 2): a share of the champion's requests mirrored to another
version in the gateway's background, the two answers compared in Prometheus metrics.

The comparison and the routing's mirror draw are checked on hand-written boxes; that clients
never wait for the shadow, and the shedding, on the gateway's service with the fake Triton of
tests/test_gateway_service.py (whose shadow calls are held open); the rest runs
on the session's real stack (`visionguard up`: Triton, gateway, control plane, MLflow). Its
served (seeded) ONNX is the champion (registered as test_console registers it, when no test
has yet), the same ONNX registered again is a shadow that must agree with it, and the suite's
trained detector exported to ONNX is a shadow that must agree less. A second gateway with a
one-place shadow queue sheds mirrors under concurrent clients, and its comparison sums are
what the automated canary analysis reads for the run (tests/test_canary_analysis.py judges
recorded runs). The gateway dashboard's shadow panels are drawn by a real Prometheus.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import gateway_process
from tests.test_console import register
from tests.test_gateway_service import FakeTriton, Upload, make_service, png
from tests.test_grafana import prometheus  # noqa: F401 - the fixture: Prometheus on the stack
from tracker_service.detection import DetectOptions
from tracker_service.routing import Routing
from tracker_service.shadow import ShadowStats, compare
from tracker_service.triton_client import InferResult

BOXES = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
SCORES = np.array([0.9, 0.8, 0.7], np.float32)
CLASSES = np.array([0, 1, 2])


def test_compare_matches_boxes_one_to_one_by_iou():
    same = compare((BOXES, SCORES, CLASSES), (BOXES, SCORES, CLASSES), 0.5)
    assert (same.matched, same.class_agreed) == (3, 3) and not same.score_deltas.any()
    # Two of three found again, shifted by 1 px (IoU 0.68), one with another class; the
    # shadow's order does not matter.
    shadow = (BOXES[[2, 0]] + 1, SCORES[[2, 0]] - 0.1, np.array([2, 5]))
    a = compare((BOXES, SCORES, CLASSES), shadow, 0.5)
    assert (a.champion_boxes, a.shadow_boxes, a.matched, a.class_agreed) == (3, 2, 2, 1)
    assert np.allclose(a.score_deltas, 0.1)
    assert compare((BOXES, SCORES, CLASSES), shadow, 0.7).matched == 0  # under the threshold
    empty = compare((BOXES, SCORES, CLASSES), (BOXES[:0], SCORES[:0], CLASSES[:0]), 0.5)
    assert (empty.matched, empty.shadow_boxes) == (0, 0)


def test_shadow_stats_sum_one_run_per_version_and_are_bounded():
    now = [100.0]
    stats = ShadowStats(max_versions=2, max_records=3, clock=lambda: now[0])
    agree = compare((BOXES, SCORES, CLASSES), (BOXES, SCORES - 0.05, CLASSES), 0.5)
    half = compare((BOXES, SCORES, CLASSES), (BOXES[:1], SCORES[:1], CLASSES[:1] + 1), 0.5)
    stats.compared("2", agree)  # an earlier run, at t=100
    now[0] = 200.0
    stats.compared("2", agree)
    stats.compared("2", half)
    stats.dropped("2", "busy")
    stats.dropped("2", "error")
    now[0] = 300.0
    stats.dropped("2", "queue_full")  # after the run's end
    run = stats.snapshot(since=150.0, until=250.0)["versions"]["2"]
    assert run == {**run, "compared": 2, "champion_boxes": 6, "shadow_boxes": 4, "matched": 4,
                   "class_agreed": 3, "shed": {"queue_full": 0, "busy": 1}, "errors": 1}
    assert run["score_delta_sum"] == pytest.approx(0.15 + 0.0)
    assert stats.snapshot(since=250.0)["versions"]["2"]["shed"]["queue_full"] == 1
    stats.compared("2", agree)
    stats.compared("2", agree)  # a ring of 3: the comparison at t=100 is gone
    kept = stats.snapshot()["versions"]["2"]
    assert kept["compared"] == 3 and kept["from_t"]["compared"] == 200.0
    stats.compared("3", agree)
    stats.compared("4", agree)  # a third version: the least recently mirrored one goes
    assert set(stats.snapshot()["versions"]) == {"3", "4"}


def test_routing_mirrors_only_the_champions_answers():
    r = Routing("detector", "1", "2", 10.0, shadow="3", shadow_percent=25.0)
    assert r.mirror_to("1", draw=0.2) == "3" and r.mirror_to("1", draw=0.3) is None
    assert r.mirror_to("2", draw=0.0) is None, "a challenger's answer is not mirrored"
    assert Routing("detector", "1", shadow="1", shadow_percent=100).mirror_to("1", 0.0) is None
    assert r.as_dict()["shadow"] == "3" and r.as_dict()["shadow_percent"] == 25.0
    # A routing without a shadow keeps the revision it had before shadows existed.
    before = hashlib.sha1(b"1|2|10").hexdigest()[:12]
    assert Routing("detector", "1", "2", 10.0).revision == before
    assert Routing("detector", "1", "2", 10.0, "3", 25.0).revision != before


# --- the gateway's service, with test_gateway_service.py's fake Triton ------------------------

class GatedTriton(FakeTriton):
    """FakeTriton whose calls to the shadow version wait until `open` is set: while they wait,
    the clients' requests must still be answered."""

    def __init__(self, *served: str, shadow: str) -> None:
        super().__init__(*served)
        self.shadow = shadow
        self.open = asyncio.Event()

    async def infer(self, image: np.ndarray, *, version: str = "", **kwargs) -> InferResult:
        if version == self.shadow:
            await self.open.wait()
        return await super().infer(image, version=version, **kwargs)


def sample(service, name: str, **labels) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def settle(condition, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"never happened: {what}")


async def test_clients_never_wait_for_the_shadow_and_a_full_queue_sheds():
    triton = GatedTriton("1", "2", shadow="2")
    service, _ = await make_service(triton, Routing("detector", "1", shadow="2",
                                                    shadow_percent=100),
                                    shadow_queue=2, shadow_concurrency=1)
    try:
        for i in range(5):  # the shadow's calls all wait; the clients' are answered
            d = await service.detect(Upload(png(40 + i, 50)), DetectOptions())
            assert d.model_version == "1"
        # The version's series exist from its first mirror: "no errors" is a 0, not absent.
        assert service.metrics.registry.get_sample_value(
            "visionguard_gateway_shadow_errors_total", {"version": "2"}) == 0.0
        # One mirror in the worker's blocked call, two in the queue, two shed.
        assert sample(service, "visionguard_gateway_shadow_shed_total", version="2",
                      reason="queue_full") == 2
        assert sample(service, "visionguard_gateway_shadow_compared_total", version="2") == 0
        triton.open.set()
        await settle(lambda: sample(service, "visionguard_gateway_shadow_compared_total",
                                    version="2") == 3, "three comparisons")
        assert sample(service, "visionguard_gateway_shadow_box_agreement", version="2") == 1.0
        assert sample(service, "visionguard_gateway_shadow_boxes_total", version="2",
                      kind="matched") == 3
        assert triton.asked.count("1") == 5 and triton.asked.count("2") == 3
        # What the canary analysis reads (GET /v1/internal/shadow-stats) says the same.
        run = service.shadow.stats.snapshot()["versions"]["2"]
        assert (run["compared"], run["shed"], run["errors"]) == (
            3, {"queue_full": 2, "busy": 0}, 0)
        assert run["matched"] == sample(service, "visionguard_gateway_shadow_boxes_total",
                                        version="2", kind="matched")
    finally:
        await service.shadow.close()


async def test_a_busy_gateway_sheds_mirrors_and_a_failing_shadow_is_counted():
    busy, _ = await make_service(FakeTriton("1", "2"), Routing(
        "detector", "1", shadow="2", shadow_percent=100), shadow_busy_pending=1)
    missing, _ = await make_service(FakeTriton("1"), Routing(
        "detector", "1", shadow="3", shadow_percent=100))
    try:
        # The request being answered counts: with a bound of 1 every mirror is shed.
        assert (await busy.detect(Upload(png(40, 50)), DetectOptions())).model_version == "1"
        assert sample(busy, "visionguard_gateway_shadow_shed_total", version="2",
                      reason="busy") == 1
        # A shadow Triton does not serve: the client's answer is the champion's, the error
        # is counted.
        assert (await missing.detect(Upload(png(40, 50)), DetectOptions())).model_version == "1"
        await settle(lambda: sample(missing, "visionguard_gateway_shadow_errors_total",
                                    version="3") == 1, "the shadow's error")
        assert busy.shadow.stats.snapshot()["versions"]["2"]["shed"]["busy"] == 1
        assert missing.shadow.stats.snapshot()["versions"]["3"]["errors"] == 1
    finally:
        await busy.shadow.close()
        await missing.shadow.close()


# --- on the real stack ----------------------------------------------------------------------------

def shadow_metrics(gateway_url: str, version: str) -> dict[str, float]:
    """The gateway's visionguard_gateway_shadow_* samples of one shadow version."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("visionguard_gateway_shadow"):
            continue
        for s in family.samples:
            if s.labels.get("version") != version or s.name.endswith(("_created", "_bucket")):
                continue
            key = s.name + "".join(f"[{s.labels[k]}]" for k in ("kind", "reason")
                                   if k in s.labels)
            out[key] = s.value
    return out


def wait_for(condition, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def post_images(url: str, images: list[bytes], champion: str) -> None:
    """Each image once; every answer is the champion's."""
    for image in images:
        r = httpx.post(f"{url}/v1/detect", content=image, params={"conf": 0.0001, "max_det": 25},
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == champion


def stop_if_shadowed(promoter, settings, headers, version: str) -> None:
    """A failed test leaves no shadow behind for the next one."""
    if served_routing(settings, headers).get("shadow") == version:
        promoter.stop_shadow()


def served_routing(settings, headers) -> dict:
    return httpx.get(f"{settings.control_url}/v1/routing", headers=headers, timeout=10).json()


def gateway_follows(settings, headers) -> None:
    """Until the stack's gateway serves the control plane's routing: the last revision its log
    names (routing_changed). It polls every second; this replaced fixed 1.5 s sleeps."""
    revision = served_routing(settings, headers)["revision"]
    log = settings.runtime_dir / "logs" / "gateway.log"

    def followed() -> bool:
        changes = [line for line in log.read_text(errors="replace").splitlines()
                   if '"routing_changed"' in line]
        return bool(changes) and f'"routing revision {revision}: ' in changes[-1]

    wait_for(followed, f"the gateway to follow routing revision {revision}")


@pytest.fixture(scope="module")
def shadowed(stack, trained_checkpoint, tmp_path_factory):
    """The stack's champion (its served ONNX), the same ONNX as another version, the trained
    detector as a third; a promoter allowed 100% shadows; tokens."""
    from control_plane.auth import TokenStore
    from control_plane.releases.promoter import Promoter
    from control_plane.releases.registry import Registry
    from export import triton_repo
    from export.onnx_export import export_onnx, read_contract

    settings = replace(stack.settings, routing_drain_s=1.0, shadow_max_percent=100.0)
    registry = Registry(settings)
    served = Path(settings.model_repository) / settings.model_name / "1" / "model.onnx"
    made_champion = registry.alias("champion") is None
    if made_champion:
        # Triton serves the seeded ONNX as version 1. Modules before this one on the same
        # session stack may have registered versions and left them without a champion
        # (test_reports does): version 1 is then the one Triton serves.
        if any(v.version == "1" for v in registry.versions()):
            registry.set_alias("champion", "1")
        else:
            register(settings, served, {}, champion=True)
    champion = registry.alias("champion")
    assert champion == "1", "the stack serves its seeded ONNX as Triton version 1"
    same = register(settings, served, {"candidate": "shadow-same"}, champion=False)
    # The ONNX the training exported beside its run (tests/trained_detector.py), else one now.
    onnx_path = trained_checkpoint.parents[2] / "model.onnx"
    if not onnx_path.exists():
        onnx_path = export_onnx(trained_checkpoint, tmp_path_factory.mktemp("trained") /
                                "model.onnx").onnx_path
    names, _, imgsz = read_contract(onnx_path)
    trained = register(settings, onnx_path, {
        "candidate": "shadow-trained", "imgsz": str(imgsz),
        "class_names": json.dumps({str(k): v for k, v in names.items()})}, champion=False)
    store = TokenStore(settings.tokens_file)
    tokens = {role: store.create(f"shadow-test-{role}", [role]) for role in ("release", "gateway")}
    promoter = Promoter(settings, actor="test", registry=registry)
    yield settings, promoter, champion, same, trained, tokens
    if registry.routing().shadow:
        promoter.stop_shadow()
    model_dir = Path(settings.model_repository) / settings.model_name
    for version in (same, trained):
        if (model_dir / version).exists():
            triton_repo.remove_version(model_dir, int(version))
    if made_champion:  # as test_console expects to find the stack: no champion
        registry.delete_alias("champion")


def shadow_panels_now(prometheus: str, version: str) -> dict[str, float]:
    """The gateway dashboard's shadow panels as Grafana would draw them now, from a real
    Prometheus scraping the stack: legend (for `version`) -> value."""
    from tests.test_grafana import GRAFANA, query

    dashboard = json.loads((GRAFANA / "dashboards" / "gateway.json").read_text())
    out = {}
    for panel in dashboard["panels"]:
        if not panel["title"].startswith("Shadow"):
            continue
        for target in panel["targets"]:
            for r in query(prometheus, target["expr"].replace("$__rate_interval", "1m")):
                if r["metric"].get("version") == version:
                    legend = target["legendFormat"].replace("{{version}}", version).replace(
                        "{{reason}}", r["metric"].get("reason", ""))
                    out[legend] = float(r["value"][1])
    return out


def test_shadow_compares_in_the_background_and_stop_unloads(shadowed, stack, bus_jpg,
                                                             shapes_images, tmp_path, request):
    settings, promoter, champion, same, trained, tokens = shadowed
    # Scraping before the shadow's traffic, to draw the dashboard's shadow panels (below).
    prometheus = request.getfixturevalue("prometheus") if shutil.which("prometheus") else None
    images = [bus_jpg] + [p.read_bytes() for p in shapes_images[:5]]
    release = {"authorization": f"Bearer {tokens['release']}"}

    # The same weights as the champion, on every request: the answers agree.
    result = promoter.shadow(same, 100).as_dict()
    request.addfinalizer(lambda: stop_if_shadowed(promoter, settings, release, same))
    assert result["routing"]["shadow"] == same and result["routing"]["shadow_percent"] == 100
    assert [s["step"] for s in result["steps"]] == ["load"]
    def shadow_routing() -> tuple:
        routing = served_routing(settings, release)
        return routing["shadow"], routing["shadow_percent"]

    wait_for(lambda: shadow_routing() == (same, 100), "the routing")
    gateway_follows(settings, release)
    post_images(stack.gateway_url, images, champion)
    m = wait_for(lambda: (m := shadow_metrics(stack.gateway_url, same)).get(
        "visionguard_gateway_shadow_compared_total", 0) >= len(images) and m,
        "the shadow's comparisons")
    assert m["visionguard_gateway_shadow_boxes_total[champion]"] > 0
    assert m["visionguard_gateway_shadow_box_agreement"] >= 0.95, m
    assert m["visionguard_gateway_shadow_class_agreement"] >= 0.95, m
    deltas = m["visionguard_gateway_shadow_score_delta_sum"] / m[
        "visionguard_gateway_shadow_score_delta_count"]
    assert deltas < 0.01, m
    assert m.get("visionguard_gateway_shadow_errors_total", 0) == 0
    # The gateway dashboard's shadow row reads series the gateway now exports.
    from tests.test_grafana import GRAFANA, metric_names, sample_names

    dashboard = json.loads((GRAFANA / "dashboards" / "gateway.json").read_text())
    shadow_panels = [p for p in dashboard["panels"] if p["title"].startswith("Shadow")]
    queried = {n for p in shadow_panels for t in p["targets"] for n in metric_names(t["expr"])}
    assert len(shadow_panels) == 3 and queried, dashboard["panels"]
    assert queried <= sample_names(f"{stack.gateway_url}/metrics"), queried
    # ...and draw the comparisons once a real Prometheus has scraped them twice
    # (test_grafana.py checks the other panels; prometheus is a Debian package of the stack).
    if prometheus is not None:
        def drawn() -> dict:
            # One more mirrored request per look: the rates need the counters to move while
            # Prometheus scrapes (the first burst may land before its first scrape of them).
            post_images(stack.gateway_url, images[:1], champion)
            p = shadow_panels_now(prometheus, same)
            return p.get(f"compared v{same}", 0) > 0 and f"matched boxes v{same}" in p and p

        panels = wait_for(drawn, "the panels")
        assert panels[f"matched boxes v{same}"] >= 0.95, panels
        assert panels[f"mean v{same}"] < 0.01 and panels[f"failed v{same}"] == 0, panels
    # The shadow cannot be the canary's challenger too (its abort would unload the shadow).
    from control_plane.releases.promoter import PromotionError

    with pytest.raises(PromotionError, match=f"version {same} is the shadow"):
        promoter.canary(same, 10)
    assert served_routing(settings, release)["challenger"] is None

    # Beside the stack's gateway, one whose shadow queue has one place (and one worker) under
    # 16 concurrent clients: mirrors are shed, and every client gets the champion's answer.
    with gateway_process(stack, tmp_path, control_url=settings.control_url,
                         control_token=tokens["gateway"], shadow_queue="1",
                         shadow_concurrency="1", shadow_busy_pending="100") as small:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=small, timeout=60) as client:
                return await asyncio.gather(*[
                    client.post("/v1/detect", content=bus_jpg, params={"conf": 0.0001},
                                headers={"content-type": "image/jpeg"}) for _ in range(16)])

        responses = asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert {r.json()["model"]["version"] for r in responses} == {champion}
        shed = wait_for(lambda: shadow_metrics(small, same).get(
            "visionguard_gateway_shadow_shed_total[queue_full]", 0), "shed mirrors")
        settled = wait_for(lambda: (m2 := shadow_metrics(small, same))[
            "visionguard_gateway_shadow_compared_total"] + m2[
            "visionguard_gateway_shadow_shed_total[queue_full]"] == 16 and m2,
            "every mirror compared or shed")
        compared = settled["visionguard_gateway_shadow_compared_total"]
        shed = settled["visionguard_gateway_shadow_shed_total[queue_full]"]
        assert shed >= 1 and compared >= 1 and settled[
            "visionguard_gateway_shadow_errors_total"] == 0
        # What the automated canary analysis of `same` would read from this gateway when its
        # canary starts: the run so far (from the audit log's `shadow` entry), summed.
        from control_plane.releases.audit import AuditLog
        from control_plane.releases.canary_analysis import (Thresholds, judge_shadow,
                                                            read_shadow_run)

        run = read_shadow_run(replace(settings, canary_gateways=small),
                              AuditLog(settings.audit_file), same)
        assert (run["champion"], run["until"], run["gateways"]) == (champion, None, 1), run
        assert (run["compared"], run["shed_by_reason"]["queue_full"]) == (compared, shed), run
        assert run["matched_fraction"] >= 0.95, run
        verdict = judge_shadow(run, same, champion, replace(
            Thresholds.from_settings(settings), min_shadow_compared=1))
        assert verdict.passed and verdict.statistic == run["matched_fraction"], verdict

    # Stop: no more mirrors, and the version leaves Triton.
    stopped = promoter.stop_shadow().as_dict()
    assert stopped["routing"]["shadow"] is None
    assert stopped["steps"][-1]["served"] == [int(champion)]
    ready = f"{settings.triton_http_url}/v2/models/{settings.model_name}/versions/{same}/ready"
    assert httpx.get(ready, timeout=5).status_code != 200
    wait_for(lambda: served_routing(settings, release)["shadow"] is None, "the routing")
    gateway_follows(settings, release)
    before = shadow_metrics(stack.gateway_url, same)["visionguard_gateway_shadow_compared_total"]
    post_images(stack.gateway_url, images[:2], champion)
    assert shadow_metrics(stack.gateway_url, same)[
        "visionguard_gateway_shadow_compared_total"] == before

    # Another model, through the control plane's HTTP API at its default maximum share (50%):
    # compared, and measurably less in agreement.
    r = httpx.post(f"{settings.control_url}/v1/models/{trained}/shadow", headers=release,
                   json={"percent": 50}, timeout=300)
    assert r.status_code == 200, r.text
    wait_for(lambda: served_routing(settings, release)["shadow"] == trained, "the routing")
    gateway_follows(settings, release)
    post_images(stack.gateway_url, images * 2, champion)
    t = wait_for(lambda: (t := shadow_metrics(stack.gateway_url, trained)).get(
        "visionguard_gateway_shadow_compared_total", 0) >= 1 and t, "the trained comparisons")
    print(f"shadow of the same ONNX: {m}\nshadow of the trained detector: {t}")
    assert t["visionguard_gateway_shadow_box_agreement"] < m[
        "visionguard_gateway_shadow_box_agreement"] - 0.2, (t, m)
    r = httpx.post(f"{settings.control_url}/v1/shadow/stop", headers=release, timeout=120)
    assert r.status_code == 200 and r.json()["routing"]["shadow"] is None, r.text


def test_shadow_refusals_say_why_and_change_nothing(shadowed, tmp_path):
    from export import triton_repo

    settings, promoter, champion, same, _trained, tokens = shadowed
    url, release = settings.control_url, {"authorization": f"Bearer {tokens['release']}"}
    model_dir = Path(settings.model_repository) / settings.model_name
    policy = triton_repo.served_versions(model_dir)

    def refused(version: str, body: dict, status: int) -> dict:
        r = httpx.post(f"{url}/v1/models/{version}/shadow", headers=release, json=body,
                       timeout=120)
        assert r.status_code == status, r.text
        return r.json()["error"]

    over = refused(same, {"percent": 80}, 400)  # the stack's maximum is the default 50%
    assert over["code"] == "shadow_share_refused" and over["max_percent"] == 50, over
    assert "VG_SHADOW_MAX_PERCENT" in over["message"]
    refused(same, {"percent": 150}, 400)
    assert "champion" in refused(champion, {"percent": 10}, 409)["message"]
    assert "no version 999" in refused("999", {"percent": 10}, 404)["message"]
    r = httpx.post(f"{url}/v1/shadow/stop", headers=release, timeout=30)
    assert r.status_code == 409 and "no shadow" in r.json()["error"]["message"], r.text
    r = httpx.post(f"{url}/v1/models/{same}/shadow",
                   headers={"authorization": f"Bearer {tokens['gateway']}"},
                   json={"percent": 10}, timeout=30)
    assert r.status_code == 403, r.text

    # A version that cannot be loaded: refused with the reason, nothing of it left behind.
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07 this is not an ONNX file")
    version = register(settings, bad, {"candidate": "shadow-broken"}, champion=False)
    error = refused(version, {"percent": 10}, 422)
    assert "onnx refused" in error["message"].lower(), error
    assert not (model_dir / version).exists()
    assert triton_repo.served_versions(model_dir) == policy
    assert served_routing(settings, release)["shadow"] is None
