"""Release reports (control_plane/reports) on the real stack's MLflow: `visionguard models report
N`, `GET /v1/models/{N}/report` and the report attached to the version's run.

The stack serves the seeded detector (Triton version 1). Two versions are registered in the
stack's MLflow: the champion, with nothing but its registered metrics (no evaluation, no ONNX
artifact: its report must say so), and a candidate whose run carries the served ONNX, names a
stored dataset version as its MLflow dataset input, and carries the evaluation wing's artifacts
(`evaluation/metrics.json`, `robustness/robustness.json`), with the gates' results that
promotion keeps as its tags. Those artifacts and tags are planted: they are the renderer's
inputs, with numbers chosen so each one can be found in the page. The sample detections are
the served model's own, run on the dataset's validation images.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import httpx
import pytest

pytestmark = pytest.mark.integration

CANDIDATE_TAGS = {"val_mAP50": "0.612345", "val_mAP50-95": "0.432100",
                  "latency_p50_ms": "8.10", "latency_p95_ms": "12.50",
                  "gate_accuracy": json.dumps({"mAP50-95": 0.4321, "champion_mAP50-95": 0.41,
                                               "tolerance": 0.02, "reference": "recorded"}),
                  "gate_latency": json.dumps({"p50_ms": 8.1, "p95_ms": 12.5,
                                              "infer_per_s": 117.3, "budget_ms": 500.0})}
PER_CLASS = [{"class_id": 0, "name": "circle", "instances": 2, "ap50": 0.7111, "ap50_95": 0.5123},
             {"class_id": 1, "name": "square", "instances": 6, "ap50": 0.6222, "ap50_95": 0.4456},
             {"class_id": 2, "name": "triangle", "instances": 5, "ap50": 0.5333,
              "ap50_95": 0.3789},
             {"class_id": 3, "name": "star", "instances": 8, "ap50": 0.4444, "ap50_95": 0.2917}]
ROBUSTNESS_RESULTS = [
    {"corruption": c, "severity": s, "mAP50-95": m, "ratio": round(m / 0.4321, 4)}
    for c, ms in (("gaussian_noise", (0.401, 0.322, 0.205)), ("motion_blur", (0.415, 0.388, 0.301)))
    for s, m in zip((1, 2, 3), ms)]


@dataclass
class Released:
    settings: object
    client: object
    champion: str
    first: str  # registered here without evaluation or ONNX
    candidate: str
    candidate_run: str
    dataset_ref: str
    val_images: list[str]
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def released(stack):
    from control_plane.auth import TokenStore
    from control_plane.datasets.lineage import mlflow_inputs
    from control_plane.datasets.store import DatasetStore
    from control_plane.datasets.synthetic import import_synthetic
    from control_plane.mlflow_store import (CHAMPION, experiment_id, mlflow_client,
                                             model_aliases, store_for)
    from control_plane.training.train import register_version

    settings = stack.settings
    dataset = import_synthetic(DatasetStore(settings, log_to_mlflow=False), n_train=12,
                               n_val=8, imgsz=128, seed=11).version
    store = store_for(settings)
    client = mlflow_client(store)
    served = settings.model_repository / settings.model_name / "1" / "model.onnx"
    exp = experiment_id(client, store, "visionguard-registry")
    aliases_before = model_aliases(client, settings.model_name)

    def register(tags: dict, artifacts: dict[str, dict], with_model: bool) -> tuple[str, str]:
        run_id = client.create_run(exp, run_name="report-test").info.run_id
        if with_model:  # the serving ONNX, and the dataset it was trained on
            client.log_artifact(run_id, str(served), "model")
            client.log_inputs(run_id, datasets=mlflow_inputs(dataset))
        for path, body in artifacts.items():
            client.log_text(run_id, json.dumps(body), path)
        client.set_terminated(run_id, "FINISHED")
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        version, _ = register_version(client, settings.model_name, source=source,
                                      run_id=run_id, tags=tags)
        return version, run_id

    evaluation = {"eval_dataset": f"{dataset.name}/val",
                  "eval_dataset_hash": dataset.split_hashes["val"],
                  "eval_data_yaml": str(dataset.data_yaml)}
    first, _ = register({"val_mAP50": "0.598000", "val_mAP50-95": "0.410000", **evaluation},
                        {}, with_model=False)
    candidate, run_id = register({**CANDIDATE_TAGS, **evaluation}, {
        "evaluation/metrics.json": {
            "dataset": f"{dataset.ref}/val", "imgsz": 128,
            "ultralytics": {"mAP50": 0.6123, "mAP50-95": 0.4321},
            "coco": {"mAP50": 0.6087, "mAP50-95": 0.4287}, "per_class": PER_CLASS},
        "robustness/robustness.json": {
            "dataset": f"{dataset.ref}/val", "imgsz": 128, "clean_mAP50-95": 0.4321,
            "results": ROBUSTNESS_RESULTS, "mean_ratio": 0.8123}}, with_model=True)
    champion = model_aliases(client, settings.model_name).get(CHAMPION)
    assert champion == (aliases_before.get(CHAMPION) or first)  # the first version: champion
    tokens = TokenStore(settings.tokens_file)
    val = sorted(p.name for p in dataset.images_dir("val").iterdir())
    yield Released(settings, client, champion, first, candidate, run_id, dataset.ref, val,
                   {"viewer": tokens.create("report-viewer", ["viewer"])})
    if CHAMPION not in aliases_before:  # leave the stack's routing as it was found
        client.delete_registered_model_alias(settings.model_name, CHAMPION)


def section(html: str, title: str) -> str:
    """The text of the report's section `title`, up to the next section."""
    match = re.search(rf"<h2>{re.escape(title)}</h2>(.*?)(?=<h2>|</body>)", html, re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def pdf_pages(data: bytes) -> list[str]:
    from pypdf import PdfReader

    assert data.startswith(b"%PDF-")
    return [page.extract_text() for page in PdfReader(io.BytesIO(data)).pages]


@pytest.fixture(scope="module")
def candidate_report(released):
    from control_plane.reports.report import build_report

    return build_report(released.settings, released.candidate, pdf=False)


def test_report_shows_each_section_with_the_versions_numbers(released, candidate_report):
    html = candidate_report.html
    assert f"detector version {released.candidate}" in html
    # self-contained: every picture is inline, nothing is fetched
    sources = re.findall(r'<img src="([^"]{0,30})', html)
    assert sources and all(re.match(r"data:image/(png|jpeg);base64,", s) for s in sources)

    metrics = section(html, "Metrics beside the champion")
    assert f"champion (v{released.champion})" in metrics
    theirs = float(released.client.get_model_version(
        released.settings.model_name, released.champion).tags["val_mAP50-95"])
    row = re.search(r"mAP50-95 \(registered\)</td>(.*?)</tr>", metrics, re.S).group(1)
    assert re.findall(r"<td[^>]*>(?:<b>)?([^<]+)", row) == [
        "0.432", f"{theirs:.3f}", f"{0.4321 - theirs:+.3f}"]
    assert "0.429" in metrics and "12.5" in metrics  # COCO mAP50-95, p95 latency

    evaluation = section(html, "Evaluation")
    assert "0.34 mAP points" in evaluation  # |0.4321 - 0.4287| Ultralytics vs COCO
    for row in PER_CLASS:
        assert re.search(rf"<td>{row['class_id']}</td><td>{row['name']}</td><td class=\"r\">"
                         rf"{row['instances']}</td>", evaluation)
        assert f"<b>{row['ap50_95']:.3f}</b>" in evaluation
    assert "No PR curve" in evaluation and "No confusion matrix" in evaluation

    robustness = section(html, "Robustness")
    assert "gaussian_noise" in robustness and "motion_blur" in robustness
    assert "0.81" in robustness  # mean ratio
    assert "0.205" in robustness and "× 0.47" in robustness  # noise at severity 3
    assert 'alt="robustness chart"' in robustness  # drawn from the JSON: the run has no PNG

    dataset = section(html, "Dataset")
    assert released.dataset_ref in dataset and "MLflow dataset input" in dataset
    assert "Passed" in dataset and "split_leakage" in dataset and "near_duplicate" in dataset
    assert "12</td>" in dataset and "8</td>" in dataset  # train and val images

    samples = section(html, "Sample detections")
    shown = re.findall(r'<figure><img src="data:image/jpeg;base64,[^"]+" alt="([^"]+)"', samples)
    assert shown == released.val_images[:4]
    assert len(re.findall(r"\d+ labelled", samples)) == 4

    gates = section(html, "Promotion gates")
    assert "gate_accuracy" in gates and "gate_latency" in gates
    assert gates.count("<b>passed</b>") == 2 and "p95_ms: <b>12.5</b>" in gates



def test_a_version_without_evaluation_says_so(released):
    from control_plane.reports.report import build_report

    html = build_report(released.settings, released.first, pdf=False).html
    assert "Not evaluated." in section(html, "Evaluation")
    assert "Not evaluated for robustness." in section(html, "Robustness")
    assert "No gates have run" in section(html, "Promotion gates")
    if released.first == released.champion:
        assert "This version is the champion" in section(html, "Metrics beside the champion")
    assert "has no model/model.onnx" in section(html, "Sample detections")


def test_cli_writes_the_report_and_attaches_it_to_the_run(released, tmp_path):
    from typer.testing import CliRunner

    from control_plane.cli import app
    from control_plane.errors import NotFound
    from control_plane.reports.collect import ReportError

    runner = CliRunner()
    out = tmp_path / "report.pdf"
    done = runner.invoke(app, ["models", "report", released.candidate, "--out", str(out)],
                         obj=released.settings)
    assert done.exit_code == 0, done.output
    pages = pdf_pages(out.read_bytes())
    assert len(pages) >= 2 and f"detector version {released.candidate}" in pages[0]
    assert "Robustness" in "".join(pages) and "gaussian_noise" in "".join(pages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]  # no temp files left
    attached = {a.path: a.file_size for a in
                released.client.list_artifacts(released.candidate_run, "report")}
    assert set(attached) == {"report/report.html", "report/report.pdf"}
    assert all(size > 10_000 for size in attached.values())

    bad = runner.invoke(app, ["models", "report", released.candidate, "--out",
                              str(tmp_path / "report.docx")], obj=released.settings)
    assert isinstance(bad.exception, ReportError) and ".html or .pdf" in bad.exception.message
    unknown = runner.invoke(app, ["models", "report", "9999"], obj=released.settings)
    assert isinstance(unknown.exception, NotFound)
    assert "has no version 9999" in unknown.exception.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]


def test_route_answers_html_and_pdf_with_a_token(released):
    url = f"{released.settings.control_url}/v1/models"
    auth = {"authorization": f"Bearer {released.tokens['viewer']}"}
    html = httpx.get(f"{url}/{released.candidate}/report", headers=auth, timeout=120)
    assert html.status_code == 200, html.text
    assert html.headers["content-type"].startswith("text/html")
    assert "<h2>Robustness</h2>" in html.text and "gaussian_noise" in html.text
    pdf = httpx.get(f"{url}/{released.candidate}/report", params={"format": "pdf"},
                    headers=auth, timeout=120)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert len(pdf_pages(pdf.content)) >= 1

    unknown = httpx.get(f"{url}/999999/report", headers=auth, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{url}/{released.candidate}/report", timeout=30).status_code == 401
    wrong = httpx.get(f"{url}/{released.candidate}/report", params={"format": "docx"},
                      headers=auth, timeout=30)
    assert wrong.status_code == 400 and "html or pdf" in wrong.json()["error"]["message"]
