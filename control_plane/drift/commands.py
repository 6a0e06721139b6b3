"""`visionguard drift ...`: check drift now, write a report, decide on retraining requests.

The live window lives in the running control plane, so these commands call its HTTP API
(`VG_CONTROL_URL`, token `VG_TOKEN`; `up` prints an operator token).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from control_plane.api_client import call_api
from control_plane.drift.retraining import RETRAINING_TAG, NoNewLabelledData
from control_plane.settings import Settings, cli_settings

app = typer.Typer(help="Data drift: checks, reports and retraining approval.",
                  no_args_is_help=True)
console = Console(soft_wrap=True)


def print_result(result: dict) -> None:
    ks = result["detectors"]["ks"]
    mmd = result["detectors"]["mmd"]
    table = Table("feature", "KS statistic", "p-value", "drift")
    for name, f in ks["features"].items():
        bad = f["p_value"] < ks["threshold"]
        table.add_row(name, f"{f['distance']:.3f}", f"{f['p_value']:.3g}",
                      "[red]yes[/]" if bad else "")
    console.print(table)
    console.print(f"KS (Bonferroni, {ks['threshold']:.3g} per feature): "
                  f"{'drift' if ks['drift'] else 'no drift'}; MMD: p = {mmd['p_value']:.3g}, "
                  f"MMD^2 = {mmd['distance']:.4g} (threshold {mmd['distance_threshold']:.4g}): "
                  f"{'drift' if mmd['drift'] else 'no drift'}")
    verdict = "[red]DRIFT[/]" if result["drift"] else "[green]no drift[/]"
    console.print(f"{verdict}: {result['model']} version {result['version']}, live "
                  f"{result['n_live']} vs reference {result['n_reference']} samples")


@app.command("check")
def check_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Option(help="reference version; default the champion")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print the raw result")] = False,
    fail_on_drift: Annotated[bool, typer.Option(help="exit 3 when drift is detected")] = False,
    ok_without_data: Annotated[bool, typer.Option(
        help="exit 0 when the live window holds too few samples for a check (scheduled runs: "
             "a quiet night is not a failure)")] = False,
) -> None:
    """Compare the live window with the champion's reference window now."""
    response = call_api(cli_settings(ctx), "POST", "/v1/drift/check",
                     ok_codes=("insufficient_data",) if ok_without_data else (),
                     params={"version": version} if version else {})
    result = response.json()
    if response.status_code >= 400:
        console.print(f"no check: {result['error']['message']}")
        return
    if as_json:
        console.print_json(json.dumps(result))
    else:
        print_result(result)
    if fail_on_drift and result["drift"]:
        raise typer.Exit(3)


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="report file: .html or .png")],
    version: Annotated[str, typer.Option(help="reference version; default the champion")] = "",
) -> None:
    """Write reference-vs-live histograms per feature, with p-values (HTML or PNG)."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("html", "png"):
        console.print("[red]the report file must end in .html or .png[/]")
        raise typer.Exit(2)
    params = {"format": fmt, **({"version": version} if version else {})}
    body = call_api(cli_settings(ctx), "GET", "/v1/drift/report", params=params).content
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    console.print(f"wrote {out} ({len(body) / 1024:.0f} KiB)")


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """The live window's size and the last check."""
    body = call_api(cli_settings(ctx), "GET", "/v1/drift/status").json()
    console.print(f"live window {body['window']} / {body['window_size']} samples (a check "
                  f"needs {body['min_samples']}); periodic check every "
                  f"{body['check_interval_s']:g} s; retraining on drift: "
                  f"{'on' if body['retrain_on_drift'] else 'off'}")
    if body["last"]:
        print_result(body["last"])
    else:
        console.print("no check yet")


@app.command("requests")
def requests_cmd(ctx: typer.Context) -> None:
    """Retraining requests opened by drift events."""
    requests = call_api(cli_settings(ctx), "GET", "/v1/drift/retraining").json()["requests"]
    table = Table("id", "state", "model", "version", "drifted features", "decided by")
    for r in requests:
        table.add_row(r["id"], r["state"], r["model"], r["version"],
                      ", ".join(r.get("drifted_features", [])[:5]), r.get("decided_by", ""))
    console.print(table)


@app.command("approve")
def approve_cmd(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="the retraining request's id")],
    train: Annotated[bool, typer.Option(
        help="run the training pipeline here after approving (`--no-train` only records)")
    ] = True,
    out_dir: Annotated[Optional[Path], typer.Option(help="training output folder")] = None,
) -> None:
    """Approve a retraining request (needs a `release` token), then run training.

    Training (`visionguard train --data NEWEST --from champion`, drift/retraining.py) registers
    a new model version; it does not serve until a release engineer promotes it (`visionguard
    models ...`). Without labelled production frames the champion has not seen it trains
    nothing and exits 3.
    """
    decided = call_api(cli_settings(ctx), "POST", f"/v1/drift/retraining/{request_id}/approve").json()
    console.print(f"[green]approved[/] retraining request {request_id} "
                  f"(by {decided['decided_by']})")
    if not train:
        console.print("recorded only; to retrain run: visionguard train")
        return
    _retrain(cli_settings(ctx), request_id, out_dir)


def _retrain(settings: Settings, request_id: str, out_dir: Path | None) -> None:
    """Train once for `request_id` (`retraining.retrain`: from the champion, on the newest
    version of its dataset; refused without new labelled data): a lock file per request under
    the runtime directory keeps `drift approve` and a scheduled `retrain-approved` on this
    machine from training it twice (the second one finds the lock held, or the version
    tagged, and says so)."""
    import fcntl

    from control_plane.drift.retraining import retrain

    locks = settings.runtime_dir / "retraining"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{request_id}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"request {request_id} is being trained by another process; skipped")
            return
        if request_id in _retrained_requests(settings):
            console.print(f"request {request_id} already has a trained version; skipped")
            return
        out = out_dir or locks / request_id
        result = retrain(settings, request_id, out, console=console)
    console.print(f"retrained for request {request_id}: {result.registered_name} version "
                  f"{result.version}; promote it with `visionguard models` once its gates pass")


def _retrained_requests(settings: Settings) -> set[str]:
    """The retraining requests that already have a registered version."""
    from control_plane.mlflow_store import mlflow_client, store_for

    client = mlflow_client(store_for(settings))
    return {mv.tags[RETRAINING_TAG]
            for mv in client.search_model_versions(f"name = '{settings.model_name}'")
            if RETRAINING_TAG in (mv.tags or {})}


@app.command("retrain-approved")
def retrain_approved_cmd(
    ctx: typer.Context,
    out_dir: Annotated[Optional[Path], typer.Option(
        help="training output folder (one subfolder per request)")] = None,
) -> None:
    """Train a new version for each retraining request a person approved and none was trained
    for yet (the schedule runs this); nothing happens when none waits. A request without new
    labelled data is skipped with its reason (exit 3 at the end): it waits for them."""
    settings = cli_settings(ctx)
    requests = call_api(settings, "GET", "/v1/drift/retraining").json()["requests"]
    approved = [r["id"] for r in requests if r["state"] == "approved"]
    waiting = sorted(set(approved) - _retrained_requests(settings)) if approved else []
    if not waiting:
        console.print("no approved retraining request waits for training")
        return
    refused = []
    for request_id in waiting:
        console.print(f"retraining for approved request {request_id}")
        try:
            _retrain(settings, request_id, out_dir / request_id if out_dir else None)
        except NoNewLabelledData as exc:  # the request waits for labelled frames
            console.print(f"[yellow]not trained:[/] {exc.message}")
            refused.append(exc)
    if refused:
        raise typer.Exit(refused[0].exit_code)


@app.command("reject")
def reject_cmd(ctx: typer.Context, request_id: Annotated[str, typer.Argument(help="the request's id")]) -> None:
    """Reject a retraining request (needs a `release` token)."""
    call_api(cli_settings(ctx), "POST", f"/v1/drift/retraining/{request_id}/reject")
    console.print(f"rejected retraining request {request_id}")
