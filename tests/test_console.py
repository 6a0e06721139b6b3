"""The release console at the control plane's `/console`, in a real headless browser against the
real stack (the session's `visionguard up`).

Debian's chromium driven by Playwright, set up as the demo page's test does (tests/
test_demo_page.py). What the stack's MLflow holds is written the way releases write it: the served
(seeded) ONNX registered as a version that becomes champion, and a second version as the
candidate; their metrics tags are this test's own numbers (the seeded model was never evaluated).
Retraining requests are opened through the drift monitor's request store, as a drift check with
VG_DRIFT_RETRAIN_ON_DRIFT=1 opens one (a real check needs a champion whose evaluation data can be
rebuilt, which the seeded model has not). Approving records the decision; `up`'s schedule then
runs `visionguard drift retrain-approved` (every 15 minutes), which trains for each approved
request no registered version answers yet. The request the browser approves is answered by the
candidate version beforehand (its `visionguard.retraining_request` tag), so the approval is real
and no training starts in the shared stack.

The screenshot goes to the test's tmp_path and to /tmp/console.png, to be looked at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from control_plane.auth import TokenStore
from control_plane.drift.commands import RETRAINING_TAG
from control_plane.drift.commands import _retrained_requests as retrained_requests
from tests.browser import is_expected_http_error, requires_chromium, screenshot

pytestmark = [pytest.mark.integration, requires_chromium]

CHAMPION_METRICS = {"val_mAP50": "0.0123", "val_mAP50-95": "0.0051"}
CANDIDATE_METRICS = {"val_mAP50": "0.0150", "val_mAP50-95": "0.0062"}
EVAL_DATASET = "synthetic-shapes-v1-seed0"
# Answered from the gateway's own lines: its routing changed when this test made a champion.
QUESTION = "when did the gateway's routing change?"


@dataclass
class Console:
    url: str  # the control plane
    tokens: dict[str, str]  # full (viewer+release+sre), viewer, gateway
    champion: str
    candidate: str
    answered_request: str  # pending, already answered by the candidate: approving trains nothing
    settings: object


def register(settings, onnx: Path, tags: dict[str, str], *, champion: bool) -> str:
    """A registered version whose artifact is `onnx`, as `register_version` writes one."""
    from control_plane.mlflow_store import experiment_id
    from control_plane.releases.registry import REGISTRY_EXPERIMENT, Registry
    from control_plane.training.train import register_version

    reg = Registry(settings)
    run = reg.client.create_run(experiment_id(reg.client, reg.store, REGISTRY_EXPERIMENT),
                                run_name="console-test")
    reg.client.log_artifact(run.info.run_id, str(onnx), "model")
    source = f"{reg.client.get_run(run.info.run_id).info.artifact_uri}/model"
    version, holder = register_version(reg.client, reg.name, source=source,
                                       run_id=run.info.run_id, claim_champion=champion,
                                       tags={"eval_dataset": EVAL_DATASET, "imgsz": "640",
                                             "class_names": '{"0": "person"}', **tags})
    reg.client.set_terminated(run.info.run_id)
    assert not champion or holder == version, "the session stack's MLflow had a champion"
    return version


def open_retraining_request(settings) -> str:
    """A pending request, opened through the monitor's store as a drifting check opens one."""
    from control_plane.drift.monitor import DriftResult, RetrainingRequests

    result = DriftResult(model=settings.model_name, version="1", checked_at=time.time(),
                         n_reference=60, n_live=200, p_value=0.05, drift=True,
                         detectors={"ks": {"drift": True, "features": {}},
                                    "mmd": {"drift": True, "p_value": 0.002}},
                         drifted_features=["brightness", "contrast"])
    request = RetrainingRequests(settings.drift_dir / "retraining.json").open(result)
    assert request is not None, "another retraining request is pending"
    return request["id"]


def record_canary_analysis(settings, version: str, champion: str) -> dict:
    """A decided analysis in the control plane's state, as CanaryAnalyst writes one."""
    from control_plane.releases.canary_analysis import CanaryAnalyst

    now = time.time()
    side = {"requests": 340, "errors": 0, "error_rate": 0.0, "p95_ms": 275.379,
            "detections_per_image": 4.3853}
    analysis = {
        "id": f"console{int(now * 1000) % 10**5:05d}", "model": settings.model_name,
        "version": version, "percent": 50.0, "window_s": 600.0, "actor": "console-test",
        "status": "aborted", "extended": False, "created_at": now - 620, "champion": champion,
        "since": now - 610, "deadline": now - 10, "decided_at": now,
        "reason": "detections per image 5.62 vs 4.39 (change +0.28, limit ±0.25)",
        "live": {"at": now, "champion": side,
                 "challenger": {**side, "requests": 345, "p95_ms": 275.27,
                                "detections_per_image": 5.62}},
        "criteria": [
            {"name": "error_rate", "passed": True, "champion": 0.0, "challenger": 0.0,
             "statistic": 0.0, "threshold": "<= +0.01", "reason": "", "extra": {}},
            {"name": "detections_per_image", "passed": False, "champion": 4.3853,
             "challenger": 5.62, "statistic": 0.2816, "threshold": "|change| <= 0.25",
             "reason": "detections per image 5.62 vs 4.39", "extra": {}},
            {"name": "shadow_agreement", "passed": None, "champion": None, "challenger": None,
             "statistic": None, "threshold": ">= 0.7 matched boxes",
             "reason": "shadow agreement not evaluated", "extra": {}}]}
    CanaryAnalyst(settings)._save(analysis)
    return analysis


@pytest.fixture(scope="module")
def console(stack):
    s = stack.settings
    store = TokenStore(s.tokens_file)
    tokens = {"full": store.create("console-test", ["viewer", "release", "sre"]),
              "viewer": store.create("console-test-viewer", ["viewer"]),
              "gateway": store.create("console-test-gateway", ["gateway"])}
    onnx = Path(s.model_repository) / s.model_name / "1" / "model.onnx"
    champion = register(s, onnx, CHAMPION_METRICS, champion=True)
    answered = open_retraining_request(s)
    candidate = register(s, onnx, {**CANDIDATE_METRICS, RETRAINING_TAG: answered,
                                   "status": "rejected", "rejected_step": "gate_accuracy"},
                         champion=False)
    assert answered in retrained_requests(s)
    yield Console(f"http://127.0.0.1:{s.control_port}", tokens, champion, candidate, answered,
                  s)
    # The session stack as found (no champion): with the suite on pytest-xdist workers, which
    # modules share a worker's stack, and in which order, varies from run to run.
    from control_plane.releases.registry import Registry

    registry = Registry(s)
    if registry.alias("champion"):
        registry.delete_alias("champion")


@pytest.fixture
def context(browser):
    """A fresh browser context recording script errors and console errors (a CSP refusal is
    one) on every page it opens, the report tabs included."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.problems = []
    context.on("console", lambda msg: msg.type == "error" and not is_expected_http_error(msg.text)
               and context.problems.append(f"console: {msg.text}"))
    context.on("weberror", lambda err: context.problems.append(f"page error: {err.error}"))
    yield context
    context.close()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def sign_in(page, token: str) -> None:
    page.fill("#token", token)
    page.click("#sign-in")


def wait_ready(page) -> None:
    page.wait_for_selector('#dashboard[data-state="ready"]', state="attached", timeout=30_000)


def cells(page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        selector, "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))")


def retraining_state(page, request_id: str) -> str:
    row = f'#retraining-body tr[data-id="{request_id}"]'
    page.wait_for_selector(row, state="attached", timeout=10_000)
    return page.get_attribute(row, "data-state")


def test_console_signs_in_shows_releases_decides_and_asks(console, context, tmp_path):
    page = context.new_page()
    response = page.goto(f"{console.url}/console")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self'" in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert page.is_visible("#login") and page.is_hidden("#dashboard")

    # A token the control plane does not know: 401, back at the login box with the reason.
    sign_in(page, "vg_not_a_token")
    page.wait_for_selector("#login-message:has-text('401 unauthorized')")
    assert page.is_hidden("#dashboard") and page.is_visible("#login")
    assert page.evaluate("sessionStorage.length") == 0

    # A viewer reads everything but may not decide: 403 names the role, back at the login box.
    first = console.answered_request
    sign_in(page, console.tokens["viewer"])
    wait_ready(page)
    assert retraining_state(page, first) == "pending"
    page.click(f'#retraining-body tr[data-id="{first}"] button.approve')
    page.wait_for_selector("#login-message:has-text('403 forbidden')")
    message = page.text_content("#login-message")
    assert "'release' role" in message and "console-test-viewer" in message
    assert message.endswith(". Sign in with a token that may do this.")
    assert page.is_hidden("#dashboard")

    # The release engineer: versions, routing and the comparison as the API has them.
    sign_in(page, console.tokens["full"])
    wait_ready(page)
    assert page.evaluate("Object.values(sessionStorage)") == [console.tokens["full"]]
    assert console.tokens["full"] not in page.url
    assert context.cookies() == []
    api = httpx.Client(base_url=console.url, headers=auth(console.tokens["full"]), timeout=30)
    versions = {v["version"]: v for v in api.get("/v1/models").json()["versions"]}
    rows = {r[0]: r for r in cells(page, "#versions-body tr")}
    assert set(rows) == set(versions)
    champion = rows[console.champion]
    assert champion[1] == "champion"
    assert champion[2:6] == ["0.0123", "0.0051", EVAL_DATASET, "none recorded"]
    assert champion[6] == versions[console.champion]["tags"].get("status", "registered")
    assert champion[7] == versions[console.champion]["created"].replace("T", " ").rstrip("Z")
    assert rows[console.candidate][1:4] == ["–", "0.0150", "0.0062"]
    assert rows[console.candidate][6] == "rejected at gate_accuracy"
    routing = api.get("/v1/routing").json()
    assert routing["champion"] == console.champion and routing["challenger"] is None
    assert page.text_content("#routing-champion") == f"version {console.champion}"
    assert page.text_content("#routing-challenger") == "none (no canary)"
    assert page.text_content("#routing-canary") == "0.0% of streams"
    compare = dict((r[0], r[1:]) for r in cells(page, "#compare-body tr"))
    assert compare["mAP50"] == ["0.0123", "0.0150", "+0.0027"]
    assert compare["mAP50-95"] == ["0.0051", "0.0062", "+0.0011"]
    # The automated canary analysis: the latest one as the API has it (none yet: said so), then
    # a decided one recorded as the analyst records it, each criterion's numbers in the table.
    latest = api.get("/v1/canary/analysis")
    if latest.status_code == 404:
        assert page.text_content("#canary-summary").startswith("None has run yet")
        assert page.is_hidden("#canary-table")
    recorded = record_canary_analysis(console.settings, console.candidate, console.champion)
    page.click("#refresh")
    wait_ready(page)
    page.wait_for_selector(f"#canary-summary:has-text('{recorded['id']}')")
    assert api.get("/v1/canary/analysis").json() == recorded
    summary = page.text_content("#canary-summary")
    assert summary == (f"{recorded['id']}: version {console.candidate} at 50% against champion "
                       f"{console.champion}, window 600 s: aborted: {recorded['reason']}")
    assert page.get_attribute("#canary-summary", "data-status") == "aborted"
    assert cells(page, "#canary-body tr") == [
        ["error_rate", "pass", "0.000", "0.000", "0.000", "<= +0.01"],
        ["detections_per_image", "fail", "4.385", "5.620", "0.282", "|change| <= 0.25"],
        ["shadow_agreement", "not evaluated", "–", "–", "–", ">= 0.7 matched boxes"]]
    assert page.text_content("#canary-live") == (
        "champion: 340 requests, 0 errors, p95 275.4 ms, 4.39 detections per image; "
        "challenger: 345 requests, 0 errors, p95 275.3 ms, 5.62 detections per image")

    # Drift: the window as the API reports it; the seeded champion has no evaluation data to
    # rebuild, so its report is a 409 that the section shows (and the page stays signed in).
    status = api.get("/v1/drift/status").json()
    assert page.text_content("#drift-window").startswith(f"{status['window']} of "
                                                         f"{status['window_size']} samples")
    assert page.text_content("#drift-last") == "no check yet"
    page.click("#drift-report")
    page.wait_for_selector("#drift-error:has-text('409 drift_unavailable')")
    expected = api.get("/v1/drift/report").json()["error"]["message"]
    assert expected in page.text_content("#drift-error")
    assert page.is_visible("#dashboard")

    # Retraining: approve the first request, reject a second one; the API agrees.
    page.click(f'#retraining-body tr[data-id="{first}"] button.approve')
    page.wait_for_selector(f'#retraining-body tr[data-id="{first}"][data-state="approved"]',
                           state="attached")
    second = open_retraining_request(console.settings)
    page.click("#refresh")
    assert retraining_state(page, second) == "pending"
    page.click(f'#retraining-body tr[data-id="{second}"] button.reject')
    page.wait_for_selector(f'#retraining-body tr[data-id="{second}"][data-state="rejected"]',
                           state="attached")
    decided = {r["id"]: r for r in api.get("/v1/drift/retraining").json()["requests"]}
    assert decided[first]["state"] == "approved" and decided[second]["state"] == "rejected"
    assert decided[first]["decided_by"] == decided[second]["decided_by"] == "console-test"
    # What `visionguard drift retrain-approved` would train now: nothing.
    approved = {i for i, r in decided.items() if r["state"] == "approved"}
    assert approved - retrained_requests(console.settings) == set()
    assert page.text_content("#retraining-message") == (
        f"Request {second} rejected by console-test.")

    # The logs: the answer and its citations are the API's.
    page.fill("#question", QUESTION)
    with page.expect_response(lambda r: r.url.endswith("/v1/logs/query")) as answered:
        page.click("#ask")
    page.wait_for_selector('#logs-result[data-state="answered"]', state="attached")
    answer = answered.value.json()
    assert answered.value.status == 200 and answer["question"] == QUESTION
    assert page.text_content("#logs-answer") == answer["answer"] != ""
    assert answer["citations"], "the stack's logs hold the gateway's routing changes"
    shown = page.eval_on_selector_all("#logs-citations li", "items => items.map(i => i.value)")
    assert shown == [c["ref"] for c in answer["citations"]]

    # The champion's release report opens from a blob: URL (the route needs the token).
    page.click(f'#versions-body tr[data-version="{console.champion}"] button')
    link = page.wait_for_selector(f'#versions-body tr[data-version="{console.champion}"] a',
                                  timeout=30_000)
    assert link.get_attribute("href").startswith("blob:")
    with context.expect_page() as opened:
        link.click()
    report = opened.value
    report.wait_for_load_state()
    assert f"version {console.champion}" in report.text_content("body")
    report.close()

    assert page.is_hidden("#versions-error") and page.is_hidden("#retraining-error")
    assert page.is_hidden("#logs-error")
    assert context.problems == []
    screenshot(page, tmp_path, "console.png")


# The API calls behind the console, as the page makes them.
CONSOLE_CALLS = [
    ("GET", "/v1/models", None), ("GET", "/v1/models/1", None),
    ("GET", "/v1/models/1/report", None), ("GET", "/v1/models/compare?a=1&b=2", None),
    ("GET", "/v1/routing", None), ("GET", "/v1/drift/status", None),
    ("GET", "/v1/drift/report?format=html", None), ("GET", "/v1/drift/retraining", None),
    ("POST", "/v1/drift/retraining/any/approve", {}),
    ("POST", "/v1/drift/retraining/any/reject", {}),
    ("POST", "/v1/logs/query", {"question": QUESTION}),
]
# Those a gateway's token may not make: every one but the two reads a gateway needs (its
# routing, the drift status its frame sampler follows). Reads take a person's token (viewer,
# release or sre: control_plane/auth.py's READERS), deciding `release`, the logs `sre`.
GATEWAY_NEEDS = [("GET", "/v1/routing", None), ("GET", "/v1/drift/status", None)]
GATEWAY_REFUSED = [c for c in CONSOLE_CALLS if c not in GATEWAY_NEEDS]


@pytest.mark.parametrize(("method", "path", "body"), CONSOLE_CALLS)
def test_console_calls_without_a_token_get_401(console, method, path, body):
    r = httpx.request(method, f"{console.url}{path}", json=body, timeout=30)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body"), GATEWAY_REFUSED)
def test_console_reads_decisions_and_questions_refuse_a_gateway_token(console, method, path,
                                                                     body):
    r = httpx.request(method, f"{console.url}{path}", json=body,
                      headers=auth(console.tokens["gateway"]), timeout=30)
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == "forbidden" and "console-test-gateway" in error["message"]


@pytest.mark.parametrize(("method", "path", "body"), GATEWAY_NEEDS)
def test_a_gateway_token_reads_what_a_gateway_needs(console, method, path, body):
    r = httpx.request(method, f"{console.url}{path}", headers=auth(console.tokens["gateway"]),
                      timeout=30)
    assert r.status_code == 200, r.text


def test_console_page_is_public_static_and_serves_nothing_else(console):
    """The page and its two assets need no token and carry no data; nothing else is served."""
    for path, media_type in (("/console", "text/html"), ("/console/console.js", "text/javascript"),
                             ("/console/console.css", "text/css")):
        r = httpx.get(f"{console.url}{path}", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
        assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("index.html", "..%2F__init__.py", "secrets.json"):
        r = httpx.get(f"{console.url}/console/{name}", timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
