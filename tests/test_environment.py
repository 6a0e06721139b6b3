"""requirements/all.txt, the lock that `python3 -m control_plane` installs (issue 16): it names
every dependency pyproject.toml names, at a version inside pyproject's range, pins everything
with hashes, and is what control_plane/stack/environment.py and the images install from.

`visionguard test` (README command 2's last step) spreads the test files over pytest-xdist
workers unless its arguments choose.

Static: nothing is installed and nothing is fetched (environment.py's commands are recorded, not
run). After a dependency change, `python3 -m control_plane.stack.environment lock` mends the lock.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from control_plane.stack import environment
from tests.test_k8s import dockerfile_lines

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "all.txt"
IMAGES = ROOT / "k8s" / "images"
# The platform the lock is resolved for (environment.LOCK_PYTHON, LOCK_PLATFORM): Debian 12's
# CPython 3.11 on x86_64. Markers in pyproject are evaluated for it.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.2", "os_name": "posix",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# Dockerfile ARGs that pin a package the lock also pins: they must agree with it.
LOCKED_ARGS = {
    "NUMPY_VERSION": "numpy",
    "ONNXRUNTIME_VERSION": "onnxruntime",
    "OPENVINO_VERSION": "openvino",
    "PYTRITON_VERSION": "nvidia-pytriton",
    "CUDA_RUNTIME_VERSION": "nvidia-cuda-runtime-cu12",
    "MLFLOW_VERSION": "mlflow",
    "UV_VERSION": "uv",
}
# ...and those that pin something the project does not depend on.
UNLOCKED_ARGS = {
    "LIBB64_VERSION", "PANGO_VERSION",  # Debian packages
    "PSYCOPG2_VERSION", "BOTO3_VERSION",  # the MLflow server's store drivers, in its image only
}
# The images that install the project with its dependencies (the others install a few pinned
# packages, checked through LOCKED_ARGS).
PROJECT_IMAGES = ("control-plane.Dockerfile", "exporter.Dockerfile", "exporter-gpu.Dockerfile",
                  "gateway.Dockerfile")


def read_lock(text: str) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, sha256 hashes), failing on anything that is not a pin."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            assert current, f"a continuation line before any requirement: {line!r}"
            pins[current][1].extend(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
            continue
        requirement = Requirement(line.rstrip(" \\"))
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not pinned: {line!r}"
        assert not requirement.marker and not requirement.url, f"not a plain pin: {line!r}"
        current = canonicalize_name(requirement.name)
        assert current not in pins, f"{current} is locked twice"
        pins[current] = (Version(specs[0].version), [])
    return pins


LOCKED = read_lock(LOCK.read_text())


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def project_requirements() -> list[tuple[str, Requirement]]:
    """(group, requirement) for the base dependencies and every extra, less the extras that
    only name other extras of the project itself (`all`)."""
    meta = project()
    groups = {"dependencies": meta["dependencies"], **meta["optional-dependencies"]}
    return [(group, Requirement(text)) for group, texts in groups.items() for text in texts
            if canonicalize_name(Requirement(text).name) != canonicalize_name(meta["name"])]


def test_the_lock_pins_every_package_with_hashes():
    assert len(LOCKED) > 100
    unhashed = sorted(name for name, (_, hashes) in LOCKED.items() if not hashes)
    assert not unhashed, f"locked without hashes: {unhashed}"
    assert canonicalize_name(project()["name"]) not in LOCKED, "the project locks itself"


def test_the_all_extra_names_every_other_extra():
    """The lock is resolved for `all`: it covers every extra only if `all` names them all."""
    meta = project()
    extras = set(meta["optional-dependencies"]) - {"all"}
    named = set()
    for text in meta["optional-dependencies"]["all"]:
        requirement = Requirement(text)
        assert canonicalize_name(requirement.name) == canonicalize_name(meta["name"])
        named |= requirement.extras
    assert named == extras


@pytest.mark.parametrize("group, requirement", project_requirements(),
                         ids=lambda value: str(value))
def test_the_lock_covers_the_dependency(group, requirement):
    if requirement.marker and not requirement.marker.evaluate(TARGET):
        pytest.skip(f"{requirement} does not apply to the lock's platform")
    name = canonicalize_name(requirement.name)
    assert name in LOCKED, (f"{requirement} ({group}) is not in {LOCK.name}: "
                            f"run `{environment.LOCK_COMMAND}`")
    version, _ = LOCKED[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{LOCK.name} pins {name}=={version}, outside pyproject's {requirement} ({group}): "
        f"run `{environment.LOCK_COMMAND}`")


def test_numpy_stays_below_2():
    # nvidia-pytriton and motmetrics need numpy<2 (pyproject's range says so too).
    assert LOCKED["numpy"][0] < Version("2")


def test_the_lock_targets_debian_12_python_311():
    assert environment.LOCK == LOCK
    assert environment.LOCK_PYTHON == "3.11"
    assert environment.LOCK_PLATFORM == "x86_64-manylinux_2_36"
    assert f"#    {environment.LOCK_COMMAND}\n" in LOCK.read_text()


# ---------------------------------------------------------------------------------------------
# environment.py installs from the lock


PIP_CONFIG = """\
global.index-url='https://mirror.example/simple'
global.extra-index-url='file:///srv/a/simple file:///srv/b/simple'
global.constraint='/etc/pip-constraints.txt'
install.find-links='/srv/wheels'
global.find-links='/ignored'
:env:.default-timeout='180'
global.cert='/etc/ssl/certs/ca-certificates.crt'
"""


def test_pip_settings_reach_uv():
    settings = environment.parse_pip_config(PIP_CONFIG)
    assert settings["find-links"] == "/srv/wheels"  # the install section over global
    install, env = environment.uv_options(settings, resolving=False)
    assert " ".join(install) == (
        "--index-url https://mirror.example/simple --extra-index-url file:///srv/a/simple "
        "--extra-index-url file:///srv/b/simple --find-links /srv/wheels "
        "--index-strategy unsafe-best-match")
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
                   "UV_HTTP_TIMEOUT": "180"}
    # Resolving the lock: the main index only (every file's hash), and pip's constraints.
    resolve, _ = environment.uv_options(settings, resolving=True)
    assert resolve == ["--index-url", "https://mirror.example/simple",
                       "--constraint", "/etc/pip-constraints.txt"]


def test_ensure_environment_installs_the_lock_then_is_a_no_op(tmp_path, monkeypatch):
    venv = tmp_path / ".venv"
    monkeypatch.setattr(environment, "VENV", venv)
    monkeypatch.setattr(environment, "STAMP", venv / ".visionguard-installed")
    monkeypatch.setattr(environment, "install_debian_packages", lambda: None)
    monkeypatch.setattr(environment, "pip_settings",
                        lambda python: environment.parse_pip_config(PIP_CONFIG))
    commands, requirement_files = [], []

    def run(cmd, **kwargs):
        commands.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            (venv / "bin").mkdir(parents=True)
            (venv / "bin" / "python").touch()
        if "-r" in cmd:
            requirement_files.append(Path(cmd[cmd.index("-r") + 1]).read_text())

    monkeypatch.setattr(environment, "_run", run)
    python = environment.ensure_environment()
    assert python == venv / "bin" / "python"

    venv_cmd, pip_uv, sync, editable = commands
    assert venv_cmd[-1] == str(venv)
    # uv itself: the lock's pin, hash-checked, by the venv's pip.
    assert pip_uv[:4] == [str(python), "-m", "pip", "install"] and "--require-hashes" in pip_uv
    assert requirement_files == [environment.locked_requirement("uv")]
    assert requirement_files[0].startswith(f"uv=={LOCKED['uv'][0]} \\\n    --hash=sha256:")
    # Then exactly the lock, hash-checked, from pip's indexes; then the project, editable.
    assert sync[:3] == [str(venv / "bin" / "uv"), "pip", "sync"]
    assert sync[-1] == str(LOCK) and "--require-hashes" in sync
    # Not every module of the lock: the venv's processes cache what they import (see below).
    assert "--compile-bytecode" not in sync
    assert "--index-url https://mirror.example/simple" in " ".join(sync)
    assert editable[:3] == [str(venv / "bin" / "uv"), "pip", "install"]
    assert editable[-2:] == ["-e", str(ROOT)] and "--no-deps" in editable
    for uv_cmd in (sync, editable):
        assert uv_cmd[uv_cmd.index("--python") + 1] == str(python)

    commands.clear()
    environment.ensure_environment()
    assert commands == [], "a second run with the same lock must not install anything"


def test_the_commands_run_in_the_venv_and_cache_their_bytecode(tmp_path, monkeypatch):
    venv = tmp_path / ".venv"
    monkeypatch.setattr(environment, "VENV", venv)
    monkeypatch.setattr(environment, "install_debian_packages", lambda packages=(): None)
    monkeypatch.setattr(environment, "ensure_environment", lambda: venv / "bin" / "python")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTHONHOME", "/elsewhere")
    calls = []
    monkeypatch.setattr(environment.os, "execve", lambda *args: calls.append(args))
    environment.reexec_in_venv(["up", "--weights", "bootstrap"])
    [(path, argv, env)] = calls
    assert path == str(venv / "bin" / "python")
    assert argv == [path, "-m", "control_plane", "up", "--weights", "bootstrap"]
    assert env["VIRTUAL_ENV"] == str(venv) and env["PATH"].startswith(str(venv / "bin"))
    # The install compiled nothing: each process writes the .pyc of what it imports.
    assert "PYTHONDONTWRITEBYTECODE" not in env and "PYTHONHOME" not in env


def test_the_stamp_follows_the_lock(tmp_path, monkeypatch):
    before = environment._stamp_value()
    lock = tmp_path / "all.txt"
    lock.write_text(LOCK.read_text() + "# changed\n")
    monkeypatch.setattr(environment, "LOCK", lock)
    assert environment._stamp_value() != before


# ---------------------------------------------------------------------------------------------
# The images install from the same lock


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_the_image_installs_the_project_from_the_lock(name):
    lines = dockerfile_lines(IMAGES / name)
    assert "COPY requirements/all.txt ./requirements/all.txt" in lines
    installs = [command.strip() for line in lines if line.startswith("RUN ")
                for command in line[4:].split("&&") if "pip install" in command]
    project = [c for c in installs if re.search(r'(^|\s)("?\.(\[[\w,]+\])?"?)(\s|$)', c)]
    assert project, f"{name} does not install the project"
    # The images set PYTHONDONTWRITEBYTECODE: without .pyc from the install, every process
    # would compile its imports from source at each start.
    assert all("--compile-bytecode" in c for c in project), project
    for command in installs:
        if command.startswith(("pip install", "python3 -m pip install")):
            # pip installs only uv, at the lock's version (the ARG test checks which).
            assert command.endswith('"uv==${UV_VERSION}"'), command
        else:
            assert command.startswith("uv pip install"), command
            assert "--constraint requirements/all.txt" in command, command


def test_image_version_args_match_the_lock():
    mismatched, unknown = [], []
    for path in sorted(IMAGES.glob("*.Dockerfile")):
        for line in dockerfile_lines(path):
            match = re.match(r"ARG (\w+_VERSION)=(\S+)$", line)
            if not match:
                continue
            arg, value = match.groups()
            if arg in UNLOCKED_ARGS:
                continue
            if arg not in LOCKED_ARGS:
                unknown.append(f"{path.name}: {arg}")
                continue
            locked = LOCKED[LOCKED_ARGS[arg]][0]
            if Version(value) != locked:
                mismatched.append(f"{path.name}: {arg}={value}, the lock has {locked}")
    assert not unknown, f"ARGs neither locked nor known to be outside the lock: {unknown}"
    assert not mismatched, mismatched



@pytest.mark.parametrize("args, workers, expected", [
    ([], 0, ["-n", "CORES", "--dist", "loadfile", "--no-loadscope-reorder"]),
    (["tests/test_nms.py", "-x"], 3, ["-n", "3", "--dist", "loadfile", "--no-loadscope-reorder"]),
    ([], 1, []),
    (["-n", "4"], 0, []),
    (["-n2"], 0, []),
    (["--numprocesses=auto"], 0, []),
    (["--dist=load"], 0, []),
    (["-p", "no:xdist"], 0, []),
])
def test_the_test_command_spreads_files_over_workers(args, workers, expected):
    from dataclasses import replace

    from control_plane.settings import Settings
    from control_plane.stack.commands import xdist_args

    cores = str(len(os.sched_getaffinity(0)))
    expected = [cores if arg == "CORES" else arg for arg in expected]
    if expected and expected[1] == "1":  # one usable core: no workers
        expected = []
    assert xdist_args(replace(Settings(), test_workers=workers), args) == expected


def test_a_negative_worker_count_is_refused(monkeypatch):
    from control_plane.settings import Settings

    monkeypatch.setenv("VG_TEST_WORKERS", "-2")
    with pytest.raises(ValueError, match="VG_TEST_WORKERS"):
        Settings()
