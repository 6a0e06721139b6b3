"""`visionguard perf tune`: sweep the served detector's Triton configuration with perf_analyzer.

What Triton's Model Analyzer does (it does not run here: it wants Docker or a GPU), on the
knobs that matter for the python backend on a CPU: model instances, the dynamic batcher's
queue delay and preferred batch sizes, and the runtime's threads per instance. Each point of
the grid is loaded into the running Triton with a config override (Triton's repository load
API takes the whole ModelConfig as JSON), so nothing is written while the sweep runs and the
served versions never change; perf_analyzer then measures it at one concurrency. The best
point is the highest throughput whose p95 latency is within the budget. At the end Triton
reloads the config on disk, unless `apply`: then the best point is written into the live
repository's config.pbtxt (atomically; promotions keep it, they only rewrite the version
policy) and loaded.

The config is read and checked with Triton's own protobuf (tritonclient's model_config_pb2 and
protobuf's text_format), never by hand; the file we write is the one export generates
(`export.triton_repo.cpu_config`'s layout) with the tuned blocks replaced, parsed back before
it is renamed into place.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from control_plane.errors import ControlPlaneError
from control_plane.perf.analyzer import PerfAnalyzerFailed, run_perf_analyzer
from control_plane.settings import Settings
from export import triton_repo


class TuneError(ControlPlaneError):
    """The sweep cannot run: no served model, a bad grid, or Triton refused every point."""

    status_code = 400
    code = "tune_failed"
    exit_code = 2


@dataclass(frozen=True)
class Point:
    """One configuration of the grid."""

    instances: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]  # () = let the batcher form any size
    threads: int  # the runtime's intra-op threads per instance

    @property
    def label(self) -> str:
        sizes = ",".join(map(str, self.preferred_batch_sizes)) or "any"
        return (f"inst {self.instances} x {self.threads} thr, delay "
                f"{self.max_queue_delay_us} us, pref {sizes}")


@dataclass
class Measured:
    point: Point
    throughput: float = 0.0  # inferences/s
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    error: str = ""

    def within(self, budget_ms: float) -> bool:
        return not self.error and self.p95_ms <= budget_ms


@dataclass
class TuneResult:
    model: str
    concurrency: int
    budget_ms: float
    baseline: Point
    results: list[Measured] = field(default_factory=list)
    best: Measured | None = None
    applied: bool = False
    config_path: str = ""

    def as_dict(self) -> dict:
        return {"model": self.model, "concurrency": self.concurrency,
                "budget_ms": self.budget_ms, "baseline": asdict(self.baseline),
                "results": [asdict(m) for m in self.results],
                "best": asdict(self.best) if self.best else None,
                "applied": self.applied, "config_path": self.config_path}


def grid(instances: list[int], delays_us: list[int], preferred: list[tuple[int, ...]],
         threads: list[int], max_batch_size: int) -> list[Point]:
    """Every combination, checked; preferred sizes above max_batch_size are refused."""
    if not (instances and delays_us and preferred and threads):
        raise TuneError("every dimension of the grid needs at least one value")
    if min(instances) < 1 or min(threads) < 1 or min(delays_us) < 0:
        raise TuneError("instances and threads must be >= 1 and delays >= 0")
    for sizes in preferred:
        if any(s < 1 or s > max_batch_size for s in sizes):
            raise TuneError(f"preferred batch sizes {list(sizes)} must be within 1.."
                            f"{max_batch_size} (the model's max_batch_size)")
    return [Point(i, d, tuple(p), t)
            for i, d, p, t in itertools.product(instances, delays_us, preferred, threads)]


def parse_sizes(spec: str) -> list[tuple[int, ...]]:
    """"2,4,8;none" -> [(2, 4, 8), ()]: sets separated by ';', "none" for no preference."""
    out: list[tuple[int, ...]] = []
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(() if part == "none" else tuple(int(s) for s in part.split(",")))
        except ValueError:
            raise TuneError(f"--preferred {spec!r}: expected sets like '2,4,8;none'",
                            field="preferred") from None
    return out


def parse_ints(spec: str, name: str) -> list[int]:
    try:
        return [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise TuneError(f"--{name} {spec!r}: expected comma-separated integers",
                        field=name) from None


def read_config(model_dir: Path):
    """config.pbtxt as Triton's ModelConfig message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = model_dir / "config.pbtxt"
    if not path.exists():
        raise TuneError(f"no served model: {path} does not exist (run `visionguard up` or "
                        "`models promote` first)")
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def current_point(config) -> Point:
    b = config.dynamic_batching
    threads = config.parameters["intra_op_threads"].string_value if \
        "intra_op_threads" in config.parameters else "1"
    return Point(sum(g.count for g in config.instance_group) or 1,
                 int(b.max_queue_delay_microseconds), tuple(b.preferred_batch_size),
                 int(threads))


def with_point(config, point: Point):
    """A copy of `config` set to `point`."""
    out = type(config)()
    out.CopyFrom(config)
    out.dynamic_batching.max_queue_delay_microseconds = point.max_queue_delay_us
    del out.dynamic_batching.preferred_batch_size[:]
    out.dynamic_batching.preferred_batch_size.extend(point.preferred_batch_sizes)
    kind = out.instance_group[0].kind if out.instance_group else None
    del out.instance_group[:]
    group = out.instance_group.add(count=point.instances)
    if kind is not None:
        group.kind = kind
    out.parameters["intra_op_threads"].string_value = str(point.threads)
    return out


_BATCHING = re.compile(r"^dynamic_batching \{.*?^instance_group \[.*?\]$", re.DOTALL | re.MULTILINE)
_THREADS = re.compile(r'^(parameters: \{ key: "intra_op_threads" value: \{ string_value: )'
                      r'"\d+"( \} \})$', re.MULTILINE)


def config_text(text: str, point: Point) -> str:
    """The generated config.pbtxt `text` with the batching, instance and thread settings of
    `point`; everything else (inputs, version policy, class names) kept as written."""
    batching = triton_repo.BatchingConfig(
        max_batch_size=int(re.search(r"^max_batch_size: (\d+)", text, re.MULTILINE).group(1)),
        preferred_batch_sizes=point.preferred_batch_sizes,
        max_queue_delay_us=point.max_queue_delay_us, instances=point.instances)
    kind = "KIND_GPU" if "KIND_GPU" in text else "KIND_CPU"
    new, n = _BATCHING.subn(lambda _m: triton_repo.batching_text(batching, kind), text)
    if n != 1:
        raise TuneError("config.pbtxt is not in the layout `visionguard export` writes "
                        "(no dynamic_batching / instance_group blocks to replace)")
    new, n = _THREADS.subn(rf'\g<1>"{point.threads}"\g<2>', new)
    if n != 1:
        raise TuneError("config.pbtxt has no intra_op_threads parameter to set")
    return new


class TritonModel:
    """The repository load API of every Triton serving `model` (tritonclient.http)."""

    def __init__(self, url: str, model: str) -> None:
        import tritonclient.http as httpclient

        self.model = model
        self.client = httpclient.InferenceServerClient(url.split("//", 1)[-1],
                                                       network_timeout=300.0)

    def load(self, config=None) -> None:
        """Load `model` with `config` (a ModelConfig) instead of the file, or from the file."""
        if config is None:
            self.client.load_model(self.model)
            return
        from google.protobuf import json_format

        self.client.load_model(self.model, config=json_format.MessageToJson(config))

    def ready(self, timeout_s: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.client.is_model_ready(self.model):
                    return True
            except Exception:  # noqa: BLE001 - busy loading: ask again
                pass
            time.sleep(0.25)
        return False


def _ms(row: dict, key: str) -> float:
    return float(row.get(key, 0) or 0) / 1000.0


def tune(settings: Settings, points: list[Point], *, concurrency: int = 8,
         budget_ms: float = 200.0, measurement_ms: int = 4000,
         stability_percentage: float = 10.0, apply: bool = False, out_dir: Path,
         progress: Callable[[int, int, Point], None] | None = None) -> TuneResult:
    """Measure every point, pick the best within the latency budget, restore or apply."""
    if concurrency < 1 or budget_ms <= 0 or measurement_ms < 500:
        raise TuneError("need concurrency >= 1, budget_ms > 0 and measurement_ms >= 500")
    model_dir = settings.model_repository / settings.model_name
    config = read_config(model_dir)
    text = (model_dir / "config.pbtxt").read_text()
    baseline = current_point(config)
    for p in points:
        config_text(text, p)  # a layout we cannot rewrite fails before anything is loaded
    triton = TritonModel(settings.triton_http_url, settings.model_name)
    result = TuneResult(settings.model_name, concurrency, budget_ms, baseline)
    out_dir.mkdir(parents=True, exist_ok=True)

    def measure() -> dict:
        rows = run_perf_analyzer(settings, concurrency=str(concurrency),
                                 measurement_ms=measurement_ms,
                                 stability_percentage=stability_percentage,
                                 csv_path=out_dir / "perf_tune_point.csv")
        return rows[-1]

    try:
        for i, point in enumerate(points):
            if progress:
                progress(i, len(points), point)
            m = Measured(point)
            try:
                triton.load(with_point(config, point))
                if not triton.ready():
                    raise TuneError("not ready after 120 s")
                row = measure()
                m.throughput = float(row["Inferences/Second"])
                m.p50_ms, m.p95_ms = _ms(row, "p50 latency"), _ms(row, "p95 latency")
                m.queue_ms = _ms(row, "Server Queue")
                m.compute_ms = _ms(row, "Server Compute Infer")
            except (PerfAnalyzerFailed, TuneError) as exc:
                m.error = exc.message if isinstance(exc, ControlPlaneError) else str(exc)
            except Exception as exc:  # noqa: BLE001 - Triton refused this point: say why
                m.error = f"Triton refused the config: {exc}"
            result.results.append(m)
    finally:
        triton.load()  # back to the file: the served config until one is applied
    ok = [m for m in result.results if m.within(budget_ms)]
    if not [m for m in result.results if not m.error]:
        raise TuneError("no point could be measured: " + "; ".join(
            f"{m.point.label}: {m.error}" for m in result.results[:3]))
    result.best = max(ok, key=lambda m: m.throughput) if ok else None
    if apply and result.best:
        new = config_text(text, result.best.point)
        read_back = _parse(new)
        if current_point(read_back) != result.best.point:
            raise TuneError("the rewritten config.pbtxt does not read back as the best point")
        result.config_path = str(triton_repo.write_config(model_dir, new))
        triton.load()
        if not triton.ready():
            raise TuneError(f"Triton did not load the tuned config ({result.config_path})")
        result.applied = True
    return result


def _parse(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def plot(result: TuneResult, path: Path) -> Path:
    """Throughput against p95 latency for every point, the budget as a line, the best ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    good = [m for m in result.results if not m.error]
    for m in good:
        colour = "tab:blue" if m.within(result.budget_ms) else "tab:grey"
        ax.scatter(m.p95_ms, m.throughput, c=colour, s=36, zorder=3)
        ax.annotate(f"{m.point.instances}x{m.point.threads} {m.point.max_queue_delay_us}us",
                    (m.p95_ms, m.throughput), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    if result.best:
        ax.scatter(result.best.p95_ms, result.best.throughput, s=220, facecolors="none",
                   edgecolors="tab:red", linewidths=2, zorder=4, label="best within budget")
    worst = max((m.p95_ms for m in good), default=1.0)
    if result.budget_ms <= 2 * worst:  # the budget line, where it does not squash the points
        ax.axvline(result.budget_ms, color="tab:red", linestyle="--", linewidth=1,
                   label=f"p95 budget {result.budget_ms:g} ms")
        ax.set_xlim(0, max(worst, result.budget_ms) * 1.15)
    else:
        ax.set_xlim(0, worst * 1.25)
        ax.plot([], [], " ", label=f"p95 budget {result.budget_ms:g} ms (off the chart)")
    base = next((m for m in good if m.point == result.baseline), None)
    if base:
        ax.axhline(base.throughput, color="tab:green", linestyle=":", linewidth=1,
                   label=f"current config {base.throughput:.1f}/s")
    ax.set_xlabel("p95 latency (ms, perf_analyzer)")
    ax.set_ylabel("inferences / s")
    ax.set_title(f"{result.model}: Triton config sweep at concurrency {result.concurrency} "
                 "(label: instances x threads, queue delay)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_ylim(0, max((m.throughput for m in good), default=1.0) * 1.2)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(result: TuneResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_dict(), indent=2))
    return path
