"""`visionguard data ...`: import, list, show, validate and generate datasets; export sampled
production frames for labelling.

They call the library (`DatasetStore`, `validate`) in-process. On a terminal each step shows a
progress bar on stderr; elsewhere (a log file, CI) each step is one line there. A refused import or a failed
validation prints the report's table, then raises its typed error, which `cli.main` maps to the
exit status (2 for a dataset that fails validation).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from control_plane.datasets.errors import DatasetInvalid
from control_plane.datasets.scan import Progress, ProgressCallback
from control_plane.settings import Settings, cli_settings

app = typer.Typer(help="Versioned datasets: import, validate, list, show, generate.",
                  no_args_is_help=True)
console = Console(soft_wrap=True)
progress_console = Console(stderr=True, soft_wrap=True)  # steps on stderr: stdout stays JSON

RuleOption = Annotated[Optional[list[str]], typer.Option(
    "--rule", help="RULE=SEVERITY[:THRESHOLD] (or RULE=:THRESHOLD); repeatable")]
ReportOption = Annotated[Optional[Path], typer.Option(help="write the JSON report here")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]


@contextmanager
def _progress(out: Console) -> Iterator[ProgressCallback]:
    if not out.is_terminal:
        def line(p: Progress) -> None:
            if p.total == 0:
                out.print(f"step: {p.step}")
            elif p.done == p.total:
                out.print(f"step: {p.step}: {p.total} done")
        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
             TimeElapsedColumn(), console=out, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(p: Progress) -> None:
            if p.step not in tasks:
                tasks[p.step] = bar.add_task(p.step, total=p.total or 1)
            bar.update(tasks[p.step], completed=p.done if p.total else 1, total=p.total or 1)
        yield update


def _rules(settings: Settings, overrides: list[str] | None):
    from control_plane.datasets.rules import default_rules, with_overrides

    return with_overrides(default_rules(settings), overrides or [])


def print_report(report: dict, out: Console = console, shown: int = 3) -> None:
    """The summary table of a validation report (its JSON form), then the first findings of
    each rule that found something."""
    table = Table("rule", "severity", "threshold", "found", box=box.SIMPLE_HEAD)
    colour = {"error": "red", "warning": "yellow"}
    for name, rule in report["rules"].items():
        found, sev = rule["found"], rule["severity"]
        mark = f"[{colour[sev]}]{found}[/]" if found and sev in colour else str(found)
        table.add_row(name, sev, "" if rule["threshold"] is None else f"{rule['threshold']:g}",
                      mark)
    out.print(table)
    for name, rule in report["rules"].items():
        for f in rule["findings"][:shown]:
            where = f.get("file") or f.get("split") or ""
            other = f" (and {f['other']})" if f.get("other") else ""
            out.print(f"  {name}: {where}{other}: {f['message']}", highlight=False)
        if rule["found"] > shown:
            out.print(f"  {name}: ... and {rule['found'] - shown} more")
    stats = ", ".join(f"{s}: {v['images']} images, {v['boxes']} boxes, {v['empty']} without"
                      for s, v in report["stats"].items())
    applied = {k: v for k, v in report.get("import_notes", {}).items() if v}
    if applied:
        out.print("  the import also: " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in applied.items())
            + (" (box_outside_image is a warning: --rule box_outside_image=error refuses them)"
               if "boxes_clipped" in applied else ""), highlight=False)
    verdict = "[green]passed[/]" if report["passed"] else "[red]FAILED[/]"
    out.print(f"{verdict} {report['target']}: {report['errors']} errors, "
              f"{report['warnings']} warnings ({stats}; {report['seconds']:.1f} s)")


def _finish(report: dict, as_json: bool, report_path: Path | None) -> None:
    if report_path:
        report_path.write_text(json.dumps(report, indent=1) + "\n")
    if as_json:
        console.print_json(json.dumps(report))
    else:
        print_report(report)
        if report_path:
            console.print(f"report: {report_path}")


def _version_table(versions) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("version", "created (UTC)", "train", "val"):
        table.add_column(column, no_wrap=True)
    for v in versions:
        table.add_row(v.ref, v.created[:16].replace("T", " "),
                      str(v.counts.get("train", {}).get("images", 0)),
                      str(v.counts.get("val", {}).get("images", 0)))
    return table


def _notes_text(notes: dict) -> str:
    """A version's notes on one line; a labelled import's per-frame lists as their sizes."""
    def text(value) -> str:
        if isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values()):
            return ", ".join(f"{k} {len(v)}" for k, v in value.items())
        return f"{len(value)} items" if isinstance(value, list) and len(value) > 3 else str(value)

    return ", ".join(f"{k} {text(val)}" for k, val in notes.items())


def _labeled_imported(labeled, as_json: bool) -> None:
    """`_imported`, and what the labelled export added to the champion's dataset."""
    result = labeled.imported
    if as_json:
        v = result.version
        console.print_json(json.dumps({**v.as_dict(), "created_now": result.created,
                                       "mlflow_run_id": result.run_id,
                                       "validation": result.report.as_dict(examples=10),
                                       "labeled_export": labeled.as_dict()}))
        return
    _imported(result, as_json)
    added = "; ".join(f"{s}: " + ", ".join(f"{n} {r}" for r, n in by.items())
                      for s, by in labeled.added.items() if by)
    console.print(f"export {labeled.export_id} added to {labeled.previous.ref}: {added}")
    for near in labeled.near_duplicates:
        console.print(f"  near duplicate: {near['frame']} of {near['existing']} "
                      f"({near['bits']} of 64 hash bits differ)", highlight=False)
    if labeled.already_present:
        console.print(f"  not added, already in the dataset: "
                      f"{', '.join(labeled.already_present)}", highlight=False)


def _imported(result, as_json: bool) -> None:
    v = result.version
    if as_json:
        console.print_json(json.dumps({**v.as_dict(), "created_now": result.created,
                                       "mlflow_run_id": result.run_id,
                                       "validation": result.report.as_dict(examples=10)}))
        return
    print_report(result.report.as_dict())
    what = "imported" if result.created else "unchanged: this content is already"
    console.print(f"[green]{what}[/] {v.ref} at {v.path}")
    counts = "; ".join(f"{s} {c['images']} images, {c['boxes']} boxes"
                       for s, c in v.counts.items())
    console.print(f"{counts}; classes {', '.join(v.classes)}")
    if v.notes:
        console.print("notes: " + _notes_text(v.notes))
    if result.run_id:
        console.print(f"MLflow: dataset {v.name} digest {v.hash[:36]} (run {result.run_id})")


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    src: Annotated[Path, typer.Argument(help="COCO JSON or folder, YOLO folder, VOC folder; "
                                             "with --labeled-export, a labelled export")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="coco | yolo | voc")] = None,
    name: Annotated[Optional[str], typer.Option(help="dataset name")] = None,
    labeled_export: Annotated[bool, typer.Option(
        "--labeled-export", help="SRC is an `export-for-labeling` folder with corrected "
                                 "labels: import it as the next version of the champion's "
                                 "dataset")] = False,
    images: Annotated[Optional[Path], typer.Option(help="COCO: the images' folder")] = None,
    classes: Annotated[str, typer.Option(help="class order, comma-separated")] = "",
    val_fraction: Annotated[Optional[float], typer.Option(
        help="val share for a source without a val split (and of a labelled export's new "
             "frames)")] = None,
    crowd: Annotated[str, typer.Option(help="COCO crowd boxes: drop | keep")] = "drop",
    new_classes: Annotated[bool, typer.Option(
        "--new-classes", help="allow a class set different from the latest version's")] = False,
    rule: RuleOption = None,
    report: ReportOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import SRC as an immutable, validated version of NAME (same content: same version)."""
    from control_plane.datasets.store import DatasetStore

    settings = cli_settings(ctx)
    if labeled_export and (fmt or name or images or classes or new_classes):
        raise typer.BadParameter("--labeled-export takes the format, name and classes from the "
                                 "export and the champion's dataset: no --format, --name, "
                                 "--images, --classes or --new-classes")
    if not labeled_export and not (fmt and name):
        raise typer.BadParameter("--format and --name are required (or --labeled-export)")
    with _progress(progress_console) as progress:
        store = DatasetStore(settings, progress=progress)
        try:
            if labeled_export:
                from control_plane.datasets.labeled_import import import_labeled_export

                labeled = import_labeled_export(store, src, val_fraction=val_fraction,
                                                rules=_rules(settings, rule))
                result = labeled.imported
            else:
                labeled = None
                result = store.import_(
                    src, fmt=fmt, name=name, images_dir=images,
                    classes=[c.strip() for c in classes.split(",") if c.strip()] or None,
                    val_fraction=val_fraction, crowd=crowd, rules=_rules(settings, rule),
                    allow_class_change=new_classes)
        except DatasetInvalid as exc:
            _finish(exc.details["report"], as_json, report)
            raise
    if report:
        report.write_text(json.dumps(result.report.as_dict(), indent=1) + "\n")
    if labeled is not None:
        _labeled_imported(labeled, as_json)
    else:
        _imported(result, as_json)


@app.command("synth")
def synth_cmd(
    ctx: typer.Context,
    n_train: Annotated[int, typer.Option(help="training images")] = 600,
    n_val: Annotated[int, typer.Option(help="validation images")] = 150,
    imgsz: Annotated[int, typer.Option(help="image size, px")] = 256,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    name: Annotated[str, typer.Option(help="dataset name; default the generator's")] = "",
    as_json: JsonOption = False,
) -> None:
    """Generate labelled shapes (the bootstrap's data; its defaults) and import them."""
    from control_plane.datasets.store import DatasetStore
    from control_plane.datasets.synthetic import import_synthetic

    settings = cli_settings(ctx)
    with _progress(progress_console) as progress:
        result = import_synthetic(DatasetStore(settings, progress=progress), n_train=n_train,
                                  n_val=n_val, imgsz=imgsz, seed=seed, name=name or None)
    _imported(result, as_json)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="only this dataset")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every dataset version (of NAME), oldest first."""
    from control_plane.datasets.store import DatasetStore

    versions = DatasetStore(cli_settings(ctx), log_to_mlflow=False).list(name)
    if as_json:
        console.print_json(json.dumps([v.as_dict() for v in versions]))
    elif not versions:
        console.print("no datasets")
    else:
        console.print(_version_table(versions))


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")],
    as_json: JsonOption = False,
) -> None:
    """One version: where it is, its classes and counts, its source and import notes."""
    from control_plane.datasets.store import DatasetStore

    v = DatasetStore(cli_settings(ctx), log_to_mlflow=False).resolve(ref)
    if as_json:
        console.print_json(json.dumps(v.as_dict()))
        return
    console.print(f"{v.ref}  created {v.created}\n  path      {v.path}\n  data.yaml "
                  f"{v.data_yaml}\n  hash      {v.hash}\n  source    {v.source.get('format')} "
                  f"{v.source.get('uri')}")
    table = Table("class", *v.counts)
    for i, c in enumerate(v.classes):
        table.add_row(f"{i} {c}", *(str(s["per_class"][i]) for s in v.counts.values()))
    table.add_row("images", *(str(s["images"]) for s in v.counts.values()))
    table.add_row("without boxes", *(str(s["empty"]) for s in v.counts.values()))
    console.print(table)
    if v.notes:
        console.print("notes: " + _notes_text(v.notes))


@app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="NAME[@VERSION], or a folder with data.yaml")],
    rule: RuleOption = None,
    report: ReportOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a dataset against every rule; exit status 2 when a rule of severity error fires."""
    from control_plane.datasets.store import DatasetStore
    from control_plane.datasets.validate import validate

    settings = cli_settings(ctx)
    store = DatasetStore(settings, log_to_mlflow=False)
    folder = Path(target)
    with _progress(progress_console) as progress:
        if "@" not in target and (folder / "data.yaml").is_file():
            result = validate(folder, _rules(settings, rule), settings=settings,
                              progress=progress)
        else:
            version = store.resolve(target)
            store.verify(version)
            result = validate(version.path, _rules(settings, rule), target=version.ref,
                              settings=settings, progress=progress)
    _finish(result.as_dict(), as_json, report)
    if not result.passed:
        raise DatasetInvalid(f"dataset {result.summary()}")


@app.command("export-for-labeling")
def export_for_labeling_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="the export folder (absent or empty)")],
    since: Annotated[Optional[str], typer.Option(
        help="frames sampled since: a duration (10m, 2h, 3d) or an ISO-8601 time")] = None,
    reason: Annotated[Optional[str], typer.Option(
        help="only frames sampled for: drift | uncertain | uniform")] = None,
    limit: Annotated[Optional[int], typer.Option(help="at most this many (the newest)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Write the gateway's sampled frames with the model's predictions as pre-annotations
    (COCO, Label Studio tasks) for labelling; exit status 3 when no frame matches."""
    from control_plane.datasets.labeling import export_for_labeling, parse_since

    settings = cli_settings(ctx)
    with _progress(progress_console) as progress:
        result = export_for_labeling(settings, out, since=parse_since(since) if since else None,
                                     reason=reason, limit=limit, progress=progress)
    summary = {"export_id": result.export_id, "out": str(result.out),
               "manifest_copy": str(result.manifest_copy), "images": result.images,
               "annotations": result.annotations, "by_reason": result.by_reason,
               "skipped": result.skipped}
    if as_json:
        console.print_json(data=summary)
        return
    console.print(f"export {result.export_id}: {result.images} images, {result.annotations} "
                  f"pre-annotations in {result.out} (COCO annotations.json, manifest.json, "
                  f"label_studio.json); by reason "
                  + ", ".join(f"{k} {v}" for k, v in result.by_reason.items() if v))
    if result.skipped:
        console.print("skipped: " + ", ".join(f"{k} {v}" for k, v in result.skipped.items()))
