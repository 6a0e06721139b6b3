"""`visionguard data ...`: import, list, show, validate and generate datasets.

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
        console.print("notes: " + ", ".join(f"{k} {val}" for k, val in v.notes.items()))
    if result.run_id:
        console.print(f"MLflow: dataset {v.name} digest {v.hash[:36]} (run {result.run_id})")


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    src: Annotated[Path, typer.Argument(help="COCO JSON or folder, YOLO folder, VOC folder")],
    fmt: Annotated[str, typer.Option("--format", help="coco | yolo | voc")],
    name: Annotated[str, typer.Option(help="dataset name")],
    images: Annotated[Optional[Path], typer.Option(help="COCO: the images' folder")] = None,
    classes: Annotated[str, typer.Option(help="class order, comma-separated")] = "",
    val_fraction: Annotated[Optional[float], typer.Option(
        help="val share for a source without a val split")] = None,
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
    with _progress(progress_console) as progress:
        store = DatasetStore(settings, progress=progress)
        try:
            result = store.import_(src, fmt=fmt, name=name, images_dir=images,
                                   classes=[c.strip() for c in classes.split(",") if c.strip()]
                                   or None, val_fraction=val_fraction, crowd=crowd,
                                   rules=_rules(settings, rule), allow_class_change=new_classes)
        except DatasetInvalid as exc:
            _finish(exc.details["report"], as_json, report)
            raise
    if report:
        report.write_text(json.dumps(result.report.as_dict(), indent=1) + "\n")
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
        console.print("notes: " + ", ".join(f"{k} {val}" for k, val in v.notes.items()))


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
