"""Shared fixtures: a seeded model exported once, and the real stack started by `visionguard up`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def ultralytics_assets() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def stack_env(repo: Path, runtime: Path, mlflow_ui: bool = False) -> dict[str, str]:
    """`up`'s environment on free ports. The MLflow UI only where a test uses it (`up` serves
    and releases without it; its start took about 5 of a stack's 18 s on an idle machine)."""
    http, grpc, metrics, gateway, control, mlflow_ui_port = free_ports(6)
    return {
        **os.environ,
        "VG_CONTROL_PORT": str(control),
        "VG_MLFLOW_UI_PORT": str(mlflow_ui_port) if mlflow_ui else "0",
        # No scheduled jobs in test stacks: a drift check or a retraining run starting at a
        # cron time would land in whichever test runs then (tests/test_schedules.py runs them).
        "VG_SCHEDULE_ENABLED": "0",
        "VG_MODEL_REPOSITORY": str(repo),
        "VG_RUNTIME_DIR": str(runtime),
        "VG_TRITON_HTTP_PORT": str(http),
        "VG_TRITON_GRPC_PORT": str(grpc),
        "VG_TRITON_METRICS_PORT": str(metrics),
        "VG_GATEWAY_PORT": str(gateway),
    }


def settings_from(env: dict[str, str]):
    from control_plane.settings import Settings

    repo = env.get("VG_MODEL_REPOSITORY")
    return Settings(
        model_repository=Path(repo) if repo else None,  # None: <runtime_dir>/model_repository
        runtime_dir=Path(env["VG_RUNTIME_DIR"]),
        triton_http_port=int(env["VG_TRITON_HTTP_PORT"]),
        triton_grpc_port=int(env["VG_TRITON_GRPC_PORT"]),
        triton_metrics_port=int(env["VG_TRITON_METRICS_PORT"]),
        gateway_port=int(env["VG_GATEWAY_PORT"]),
        control_port=int(env["VG_CONTROL_PORT"]),
        mlflow_ui_port=int(env["VG_MLFLOW_UI_PORT"]),
    )


@pytest.fixture(scope="session")
def seeded_repo(tmp_path_factory) -> Path:
    """A model repository: yolov8n.yaml (seed 0) as detector version 1, resnet18 (seed 0) as
    reid version 1."""
    from export.pipeline import export_to_repository
    from export.reid import export_reid_to_repository

    repo = tmp_path_factory.mktemp("model_repository")
    export_to_repository("yolov8n.yaml", repo, version=1, seed=0)
    export_reid_to_repository("resnet18", repo, version=1, seed=0)
    return repo


@dataclass
class Stack:
    settings: object
    env: dict[str, str]
    proc: subprocess.Popen
    gateway_url: str


def checkout_state() -> str:
    """What git sees in the checkout: status and the diff of tracked files (the product must
    never change either; a developer's own uncommitted work is in both before and after)."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    diff = subprocess.run(["git", "diff", "--binary"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    return status + diff


@contextmanager
def run_up(env: dict[str, str], log: Path, timeout_s: float = 240):
    """`visionguard up` as a user runs it, until it prints its URLs; stopped with SIGINT
    (Ctrl-C) at the end, which must exit 0 and free the ports. It starts in a directory of its
    own, not the checkout: its state must go to the runtime directory whatever the cwd."""
    settings = settings_from(env)
    cwd = log.parent / "cwd"
    cwd.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "control_plane", "up"], env=env,
                                cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.gateway_port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"visionguard up exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)  # let up stop its children before we give up
            proc.wait(timeout=60)
            pytest.fail(f"stack not ready:\n{log.read_text()}")
        # Ready when `up` has printed its URLs (after its own readiness checks), as a user sees.
        if "Ctrl-C stops everything" in log.read_text(errors="replace"):
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            break
        time.sleep(0.1)
    try:
        yield Stack(settings, env, proc, url)
    finally:
        # Ctrl-C, also when the body failed (a fixture's set-up after the stack started, say):
        # the stack's processes never outlive the run.
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    # Ctrl-C stops Triton, its python-backend stubs, the control plane, the gateway and MLflow
    # in time: nothing keeps the ports.
    assert code == 0, log.read_text()
    ports = [settings.triton_http_port, settings.triton_grpc_port, settings.gateway_port,
             settings.control_port] + ([settings.mlflow_ui_port] if settings.mlflow_ui_port else [])
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"
    assert not any(cwd.iterdir()), f"`up` wrote into its working directory: {list(cwd.iterdir())}"


@pytest.fixture(scope="session")
def stack(seeded_repo, tmp_path_factory):
    """`visionguard up` on the seeded repository (see run_up)."""
    env = stack_env(seeded_repo, tmp_path_factory.mktemp("runtime"))
    with run_up(env, tmp_path_factory.mktemp("logs") / "up.log") as running:
        yield running


@contextmanager
def gateway_process(stack: Stack, log_dir: Path, **settings: str):
    """One more real gateway process on the shared Triton, with VG_GATEWAY_* overrides."""
    from control_plane.stack.supervisor import Supervisor, wait_http_ok

    (port,) = free_ports(1)
    env = {**os.environ, "VG_GATEWAY_TRITON_URL": stack.settings.triton_grpc_url,
           **{f"VG_GATEWAY_{k.upper()}": v for k, v in settings.items()}}
    with Supervisor(log_dir) as supervisor:
        child = supervisor.start("gateway", [sys.executable, "-m", "control_plane", "serve",
                                             "gateway", "--port", str(port)], env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(f"{url}/readyz", child.proc, 60, "gateway")
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}:\n{child.log_path.read_text()}")
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright (tests/browser.py), once per test module."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def bus_jpg() -> bytes:
    return (ultralytics_assets() / "bus.jpg").read_bytes()


def pytest_collection_modifyitems(session, config, items) -> None:
    """The modules with a test that waits for the trained detector run after all the others,
    each still whole and in its own order: the other modules (most of the suite) then cover
    the detector's training in the background, where in file order the first such test
    waited 139 s for it (CI of stop 21). pytest-xdist keeps this order with
    --no-loadscope-reorder (`visionguard test` passes it): by default it sends the files with
    the most tests first."""
    waits = {item.module.__name__ for item in items
             if "trained_checkpoint" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: item.module.__name__ in waits)  # stable: order kept within


def _needs_training(session) -> bool:
    return not os.environ.get("VG_TEST_CHECKPOINT") and any(
        "trained_checkpoint" in getattr(item, "fixturenames", ()) for item in session.items)


def shared_tmp(tmp_path_factory) -> Path:
    """A directory all of this run's pytest-xdist workers share (the run's own base temporary
    directory without xdist): what a session would otherwise do once per worker is done once
    there, under a file lock."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


# Niceness of the test processes while the detector trains at the default 0 (Linux's
# scheduler weighs nice 5 at about a third of nice 0).
TESTS_NICE = 5


@dataclass
class Training:
    out: Path
    pid: int
    proc: subprocess.Popen | None  # the process, in the session that started it


@pytest.fixture(scope="session", autouse=True)
def _detector_training(request, tmp_path_factory):
    """Start training the suite's small detector (tests/trained_detector.py) as the session
    starts, in a process of its own that takes the cores the tests leave idle, when a
    selected test needs it: the tests before the first of those (most of the suite, see
    pytest_collection_modifyitems) run meanwhile. With pytest-xdist the first worker to get
    here starts it and the others wait for the same one. Trained inside the first test that
    needed it, it took 267 s of a 25-minute CI run while the suite used 1.2 cores on average."""
    if not _needs_training(request.session):
        yield None
        return
    from filelock import FileLock

    shared = shared_tmp(tmp_path_factory)
    out = shared / "tiny-train"
    with FileLock(str(shared / "tiny-train.lock")):
        if out.exists():
            training = Training(out, int((out / "pid").read_text()), None)
        else:
            out.mkdir()
            with open(out / "training.log", "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "tests.trained_detector",
                                         str(out)], cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT)
            (out / "pid").write_text(str(proc.pid))
            training = Training(out, proc.pid, proc)
    # The training is the run's critical path (about a third of the suite's modules wait for
    # it): the test processes, and what they start, yield the CPU to it.
    os.nice(TESTS_NICE)
    yield training
    if training.proc is None:
        return
    try:
        # Under pytest-xdist other workers may still wait for it: it ends by itself (or with
        # the run's Ctrl-C). Alone, nothing else will read it.
        training.proc.wait(timeout=1800 if os.environ.get("PYTEST_XDIST_WORKER") else 0)
    except subprocess.TimeoutExpired:
        training.proc.kill()
        training.proc.wait()


def _training_running(training: Training) -> bool:
    if training.proc is not None:
        return training.proc.poll() is None
    import psutil

    try:
        return psutil.Process(training.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="session")
def trained_checkpoint(_detector_training) -> Path:
    """The suite's small trained detector (tests/trained_detector.py), waited for.
    VG_TEST_CHECKPOINT points at a better one (e.g. the bootstrap model) to use instead."""
    override = os.environ.get("VG_TEST_CHECKPOINT")
    if override:
        return Path(override)
    training: Training = _detector_training
    result = training.out / "result.json"
    deadline = time.monotonic() + 1800
    while not result.exists() and _training_running(training):
        if time.monotonic() > deadline:
            pytest.fail("the test detector's training took over 30 minutes")
        time.sleep(0.5)
    if not result.exists():  # written last, once training succeeded
        pytest.fail(f"the test detector's training exited without a result:\n"
                    f"{(training.out / 'training.log').read_text(errors='replace')[-4000:]}")
    return Path(json.loads(result.read_text())["best_pt"])


@pytest.fixture(scope="session")
def shapes_images(tmp_path_factory) -> list[Path]:
    """Held-out generated images (another seed than the training data), as JPEG files."""
    import cv2

    from control_plane.datasets.synthetic_data import generate_dataset

    out = tmp_path_factory.mktemp("shapes")
    data_yaml = generate_dataset(out / "data", n_train=0, n_val=6, imgsz=320, seed=99)
    images = sorted((Path(data_yaml).parent / "images" / "val").glob("*"))
    paths = []
    for i, src in enumerate(images):
        dst = out / f"shapes_{i}.jpg"
        cv2.imwrite(str(dst), cv2.imread(str(src)), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(dst)
    return paths
