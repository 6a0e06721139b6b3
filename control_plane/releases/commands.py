"""`visionguard models ...`: the release engineer's commands, run on the control-plane machine.

They call the same library as the HTTP API (control_plane.releases.registry, control_plane.releases.promoter),
record the operator as `cli:<user>` in the audit log, and show each step as it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from control_plane.api_client import call_api
from control_plane.errors import ControlPlaneError
from control_plane.settings import Settings, cli_settings

app = typer.Typer(help="Register, compare, promote, canary and roll back model versions.",
                  no_args_is_help=True)
console = Console(soft_wrap=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "-"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _promoter(settings: Settings):
    from control_plane.releases.audit import local_actor
    from control_plane.releases.promoter import Promoter

    status = console.status("starting...")

    def progress(step: str) -> None:
        status.update(f"{step}...")
        console.log(f"step: {step}")

    return Promoter(settings, actor=local_actor(), progress=progress), status


def _operate(settings: Settings, action: str, fn) -> None:
    """Run a release operation with a live step display; print its steps or why it failed."""
    from control_plane.releases.promoter import CandidateRejected

    promoter, status = _promoter(settings)
    try:
        with status:
            result = fn(promoter)
    except CandidateRejected as exc:
        console.print(f"[red]rejected[/] at step {exc.details.get('step')}: {exc.message}")
        _steps(exc.details.get("steps", []))
        console.print("the champion keeps serving; nothing of the candidate is left in the "
                      "model repository")
        raise typer.Exit(exc.exit_code) from None
    except ControlPlaneError as exc:
        console.print(f"[red]{action} refused:[/] {exc.message}")
        raise typer.Exit(exc.exit_code) from None
    body = result.as_dict()
    _steps(body["steps"])
    r = body["routing"]
    console.print(f"[green]{action} done[/] in {body['seconds']:.1f} s: champion "
                  f"{r['champion']}, challenger {r['challenger'] or '-'} at "
                  f"{r['canary_percent']:g}%"
                  + (f", shadow {r['shadow']} at {r['shadow_percent']:g}%" if r.get("shadow")
                     else "") + f" (routing revision {r['revision']})")


def _steps(steps: list[dict]) -> None:
    if not steps:
        return
    table = Table("step", "ok", "seconds", "detail")
    for s in steps:
        detail = {k: v for k, v in s.items() if k not in ("step", "ok", "seconds")}
        table.add_row(s["step"], "yes" if s["ok"] else "[red]no[/]", f"{s['seconds']:.2f}",
                      json.dumps(detail, default=str, ensure_ascii=False)[:160])
    console.print(table)


@app.command()
def register(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="An Ultralytics .pt checkpoint.")],
    eval_data: Annotated[Optional[Path], typer.Option(
        help="YOLO data.yaml to evaluate on; default: the champion's evaluation data.")] = None,
    description: Annotated[str, typer.Option(help="Version description.")] = "",
) -> None:
    """Evaluate a checkpoint, export its ONNX, log both to MLflow and register a version."""
    from control_plane.releases.audit import local_actor
    from control_plane.releases.registry import Registry

    registry = Registry(cli_settings(ctx))
    with console.status("registering...") as status:
        info = registry.register(checkpoint, actor=local_actor(), eval_data=eval_data,
                                 description=description,
                                 progress=lambda s: status.update(f"{s}..."))
    console.print(f"registered {info.name} version {info.version}: mAP50 {_fmt(info.map50)}, "
                  f"mAP50-95 {_fmt(info.map)} on {info.eval_dataset}"
                  + (f" (aliases: {', '.join(info.aliases)})" if info.aliases else ""))


@app.command()
def quantize(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The FP32 version to quantise.")],
    calibration_images: Annotated[Optional[int], typer.Option(
        help="Images of the version's training data to calibrate with; default "
             "VG_QUANTIZE_CALIBRATION_IMAGES (300).")] = None,
) -> None:
    """An INT8 variant of a version (NNCF post-training quantisation to OpenVINO IR, calibrated
    on the data it was trained on), registered as a new version; promote it like any other."""
    from control_plane.releases.audit import local_actor
    from control_plane.releases.quantize import quantize_version
    from control_plane.releases.registry import Registry

    settings = cli_settings(ctx)
    with console.status("quantising...") as status:
        def progress(step: str) -> None:
            status.update(f"{step}...")
            console.log(f"step: {step}")

        info = quantize_version(settings, Registry(settings), version, actor=local_actor(),
                                calibration_images=calibration_images, progress=progress)
    t = info.tags
    console.print(f"registered {info.name} version {info.version}: INT8 variant of version "
                  f"{t['parent_version']}, {t['calibration_images']} calibration images "
                  f"({t['calibration_kind']} data), mAP50-95 on the served path "
                  f"{_fmt(t['int8_served_mAP50-95'], 4)} vs "
                  f"{_fmt(t['parent_served_mAP50-95'], 4)} FP32; promote it with "
                  f"`visionguard models promote {info.version}`")


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Registered versions, their aliases, metrics and status."""
    from control_plane.releases.registry import Registry

    registry = Registry(cli_settings(ctx))
    routing = registry.routing()
    table = Table(title=f"{registry.name} (champion {routing.champion or '-'}, challenger "
                        f"{routing.challenger or '-'} at {routing.canary_percent:g}%)")
    for col in ("version", "aliases", "mAP50", "mAP50-95", "p95 ms", "status", "created",
                "eval dataset"):
        table.add_column(col)
    for v in registry.versions():
        table.add_row(v.version, ",".join(v.aliases), _fmt(v.map50), _fmt(v.map),
                      _fmt(v.tags.get("latency_p95_ms"), 1), v.tags.get("status", "registered"),
                      v.created, v.eval_dataset)
    console.print(table)


@app.command()
def show(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version number.")]) -> None:
    """One version: metrics, lineage, aliases, gate results."""
    from control_plane.releases.registry import Registry

    info = Registry(cli_settings(ctx)).get(version)
    console.print_json(json.dumps(info.as_dict(), default=str))


@app.command()
def compare(ctx: typer.Context, a: Annotated[str, typer.Argument(help="Version A (e.g. the champion).")],
            b: Annotated[str, typer.Argument(help="Version B (the candidate).")]) -> None:
    """Metrics and lineage of two versions side by side."""
    from control_plane.releases.registry import Registry

    diff = Registry(cli_settings(ctx)).compare(a, b)
    table = Table("metric", f"v{a} {','.join(diff['aliases']['a'])}",
                  f"v{b} {','.join(diff['aliases']['b'])}", "b - a",
                  title=f"{diff['model']}: same evaluation dataset: {diff['same_eval_dataset']}")
    for key, row in diff["metrics"].items():
        table.add_row(key, _fmt(row["a"], 4), _fmt(row["b"], 4), _fmt(row["delta"], 4))
    for key, row in diff["lineage"].items():
        table.add_row(key, str(row["a"] or "-")[-48:], str(row["b"] or "-")[-48:], "")
    console.print(table)


def _aliased_version(settings: Settings, alias: str) -> str:
    from control_plane.mlflow_store import mlflow_client, model_aliases, store_for
    from control_plane.reports.collect import UnknownModelVersion

    aliases = model_aliases(mlflow_client(store_for(settings)), settings.model_name)
    if alias not in aliases:
        raise UnknownModelVersion(f"{settings.model_name} has no {alias!r} alias",
                                  model=settings.model_name, alias=alias,
                                  aliases=sorted(aliases))
    return aliases[alias]


@app.command()
def report(ctx: typer.Context,
           version: Annotated[str, typer.Argument(
               help="Version number, or an alias (champion, challenger, previous).")],
           out: Annotated[Optional[Path], typer.Option(
               help="Write the report here, as .html or .pdf; default: both, under the "
                    "runtime directory's reports/.")] = None,
           attach: Annotated[bool, typer.Option(
               help="Also log it to the version's MLflow run (report/report.html, .pdf).")
           ] = True) -> None:
    """The version's release report a person reads: metrics beside the champion, evaluation,
    robustness, dataset and its validation, sample detections, gates (HTML and PDF)."""
    from control_plane.reports.report import attach as attach_report
    from control_plane.reports.report import build_report, output_format, write_report

    settings = cli_settings(ctx)
    if out is not None:
        output_format(out)  # a bad suffix is refused before anything is built
    if not version.isdigit():  # an alias: the nightly schedule reports on the champion
        version = _aliased_version(settings, version)
    with console.status(f"building the report of version {version}..."):
        built = build_report(settings, version)
        outs = [out] if out is not None else [
            settings.reports_dir / f"{built.model}-v{built.version}.{fmt}"
            for fmt in ("html", "pdf")]
        written = [write_report(built, path) for path in outs]
        attached = attach_report(settings, built) if attach else []
    for path in written:
        console.print(f"wrote {path}")
    if attached:
        console.print(f"attached to MLflow run {built.run_id}: {', '.join(attached)}")


@app.command()
def promote(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version to make champion.")]) -> None:
    """Load, check and gate a version, then make it the champion (the old one stays loaded)."""
    _operate(cli_settings(ctx), "promote", lambda p: p.promote(version))


@app.command()
def canary(
    ctx: typer.Context,
    version: Annotated[Optional[str], typer.Argument(help="Version to canary.")] = None,
    percent: Annotated[float, typer.Option(help="Share of streams for the challenger.")] = 10.0,
    abort: Annotated[bool, typer.Option("--abort", help="End the running canary.")] = False,
    auto: Annotated[bool, typer.Option(
        "--auto", help="Let the control plane compare the challenger with the champion on live "
                       "traffic over --window, then promote or abort by itself.")] = False,
    window: Annotated[Optional[str], typer.Option(
        help="--auto's window: 30s, 10m, 1h (default VG_CANARY_WINDOW_S).")] = None,
    status: Annotated[bool, typer.Option(
        "--status", help="The latest automated analysis (of VERSION, if given).")] = False,
    detach: Annotated[bool, typer.Option(
        "--detach", help="With --auto: return once the canary runs, without following the "
                         "analysis to its decision.")] = False,
) -> None:
    """Send percent% of streams (sticky per stream) to a checked challenger; `--abort` ends
    it, `visionguard models promote <challenger>` completes it. With --auto the running
    control plane (VG_CONTROL_URL, token VG_TOKEN) decides after the window; the command
    follows the analysis and exits 0 when the challenger was promoted, 3 otherwise."""
    settings = cli_settings(ctx)
    if status:
        _print_analysis(_api(settings, "GET", f"/v1/models/{version}/canary" if version
                             else "/v1/canary/analysis"))
        return
    if abort:
        _operate(settings, "canary abort", lambda p: p.abort_canary())
        return
    if version is None:
        raise typer.BadParameter("give a version, or --abort")
    if not auto:
        _operate(settings, "canary", lambda p: p.canary(version, percent))
        return
    from control_plane.releases.canary_analysis import parse_window

    body = {"percent": percent, "auto": True,
            "window_s": parse_window(window) if window else None}
    with console.status(f"starting the canary of version {version} (checks and gates)..."):
        started = _api(settings, "POST", f"/v1/models/{version}/canary", json=body)
    _steps(started["steps"])
    a = started["analysis"]
    console.print(f"[green]canary running[/]: version {version} at {percent:g}% against "
                  f"champion {a['champion']}; the decision is due in {a['window_s']:g} s "
                  f"(analysis {a['id']})")
    if detach:
        return
    a = _follow(settings, version)
    _print_analysis(a)
    raise typer.Exit(0 if a["status"] == "promoted" else 3)


def _api(settings: Settings, method: str, path: str, **kwargs) -> dict:
    return call_api(settings, method, path, timeout=900.0, console=console, **kwargs).json()


def _follow(settings: Settings, version: str) -> dict:
    """Poll the analysis every `canary_follow_s` until it is over; a line per change of
    state."""
    import time

    from control_plane.releases.canary_analysis import ACTIVE

    seen = None
    with console.status("analysing...") as shown:
        while True:
            a = _api(settings, "GET", f"/v1/models/{version}/canary")
            if a["status"] != seen:
                console.log(f"analysis {a['id']}: {a['status']}"
                            + (f" ({a['reason']})" if a.get("reason") else ""))
                seen = a["status"]
            if a["status"] not in ACTIVE:
                return a
            live = a.get("live") or {}
            shown.update(f"{a['status']}: {max(0.0, a.get('deadline', 0) - time.time()):.0f} s "
                         f"left; requests: challenger "
                         f"{live.get('challenger', {}).get('requests', 0)}, champion "
                         f"{live.get('champion', {}).get('requests', 0)}")
            time.sleep(settings.canary_follow_s)


def _print_analysis(a: dict) -> None:
    live = a.get("live") or {}
    table = Table("criterion", "verdict", f"champion v{a.get('champion')}",
                  f"challenger v{a['version']}", "statistic", "threshold",
                  title=f"canary analysis {a['id']}: version {a['version']} at "
                        f"{a['percent']:g}%, window {a['window_s']:g} s"
                        + (" (extended once)" if a.get("extended") else ""))
    for c in a.get("criteria", []):
        verdict = {True: "[green]pass[/]", False: "[red]fail[/]", None: "skipped"}[c["passed"]]
        table.add_row(c["name"], verdict, _fmt(c["champion"]), _fmt(c["challenger"]),
                      _fmt(c["statistic"]), c["threshold"])
    for c in a.get("criteria", []):  # the tests' statistics and sample sizes (KS p, n, shadow)
        if c.get("extra"):
            table.caption = (table.caption or "") + f"{c['name']}: {json.dumps(c['extra'])}\n"
    for side in ("champion", "challenger"):
        numbers = live.get(side)
        if numbers:
            table.caption = (table.caption or "") + f"{side}: {json.dumps(numbers)}\n"
    console.print(table)
    console.print(f"status [bold]{a['status']}[/]" + (f": {a['reason']}" if a.get("reason")
                                                      else ""))


@app.command()
def shadow(
    ctx: typer.Context,
    version: Annotated[Optional[str], typer.Argument(help="Version to shadow.")] = None,
    percent: Annotated[float, typer.Option(
        help="Share of the champion's requests mirrored to it (at most VG_SHADOW_MAX_PERCENT)."
    )] = 10.0,
    stop: Annotated[bool, typer.Option("--stop", help="End the running shadow.")] = False,
) -> None:
    """Mirror percent% of the champion's requests to a version in the background and compare
    the answers (gateway metrics visionguard_gateway_shadow_*); clients get the champion's."""
    if stop:
        _operate(cli_settings(ctx), "shadow stop", lambda p: p.stop_shadow())
        return
    if version is None:
        raise typer.BadParameter("give a version, or --stop")
    _operate(cli_settings(ctx), "shadow", lambda p: p.shadow(version, percent))


@app.command()
def rollback(ctx: typer.Context, to: Annotated[Optional[str], typer.Option(
        help="Version to roll back to; default: the previous champion.")] = None) -> None:
    """Make the previous champion (or --to) serve again; the current one unloads."""
    _operate(cli_settings(ctx), "rollback", lambda p: p.rollback(to))


@app.command()
def audit(ctx: typer.Context, limit: Annotated[int, typer.Option(help="Entries to show.")] = 30,
          steps: Annotated[bool, typer.Option(help="Also each check's entry.")] = False,
          ) -> None:
    """The release audit log (who, what, when, gate results)."""
    from control_plane.releases.audit import AuditLog

    table = Table("time", "actor", "action", "version", "outcome", "detail")
    entries = AuditLog(cli_settings(ctx).audit_file).entries(limit * 10)
    entries = [e for e in entries if steps or not e["action"].startswith("step:")][-limit:]
    for e in entries:
        detail = {k: v for k, v in e.items()
                  if k not in ("ts", "actor", "action", "model", "version", "outcome", "steps")}
        table.add_row(e["ts"], e["actor"], e["action"], str(e.get("version") or "-"),
                      e["outcome"], json.dumps(detail, default=str, ensure_ascii=False)[:120])
    console.print(table)
