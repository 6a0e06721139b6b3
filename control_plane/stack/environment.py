"""Bring a fresh machine to a working environment, with nothing but the standard library.

`python3 -m control_plane <command>` runs this first: it creates `.venv/` beside the checkout,
installs the locked dependencies (every extra) and the project itself (editable), the Debian
packages perf_analyzer needs (where we are root), and then re-executes the same command inside
the environment. A stamp file keyed on pyproject.toml, the lock and this file makes the second
run a no-op, so the README commands stay fast.

The lock, `requirements/all.txt`, pins every package with its hashes for CPython 3.11 on Linux
x86_64 with glibc 2.36 (Debian 12; nvidia-pytriton's wheels need manylinux_2_35). uv installs it
(`uv pip sync`: exactly the lock, hashes checked, what it no longer lists removed). Issue 16
measured pip resolving pyproject's ranges at every fresh install instead, backtracking through
opencv-python-headless releases (numpy<2 excludes the newer ones), 264 s before the tests began.
uv comes from the lock too, installed by the new venv's own pip. uv does not read pip's
configuration, so the index settings pip would use (pip.conf, PIP_* variables: a mirror, extra
indexes, find-links folders, a CA bundle) are handed to it.

After changing a dependency in pyproject.toml: `python3 -m control_plane.stack.environment lock`
(keeps every other pin; `lock --upgrade` moves everything to the newest allowed release), then
commit pyproject.toml and the lock together; tests/test_environment.py fails while they disagree.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
STAMP = VENV / ".visionguard-installed"
LOCK = ROOT / "requirements" / "all.txt"
# The lock's target: Debian 12's CPython and glibc.
LOCK_PYTHON = "3.11"
LOCK_PLATFORM = "x86_64-manylinux_2_36"
LOCK_COMMAND = "python3 -m control_plane.stack.environment lock"
# libb64-0d: perf_analyzer links against libb64.so.0d. prometheus: promtool checks the alert rules
# and a real Prometheus scrapes the stack in the tests. libpango-1.0-0, libpangoft2-1.0-0:
# WeasyPrint lays out the release report's PDF with pango (control_plane/reports).
DEBIAN_PACKAGES = ("libb64-0d", "prometheus", "libpango-1.0-0", "libpangoft2-1.0-0")
# chromium: the demo page's tests drive a real headless browser (tests/test_demo_page.py). Only
# the `test` command installs it (reexec_in_venv), so `up` never pulls a browser.
# prometheus-alertmanager: its `amtool check-config` checks k8s/base/config/alertmanager.yml.
TEST_DEBIAN_PACKAGES = ("chromium", "prometheus-alertmanager")


def _stamp_value() -> str:
    digest = hashlib.sha256()
    for path in (ROOT / "pyproject.toml", LOCK, Path(__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def inside_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def _missing_debian_packages(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for pkg in packages:
        probe = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if "install ok installed" not in probe.stdout:
            missing.append(pkg)
    return missing


def install_debian_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> None:
    if not shutil.which("dpkg-query"):
        return
    missing = _missing_debian_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        print(f"warning: Debian packages {missing} are missing and we are not root: "
              "what needs them (perf_analyzer, promtool, the browser tests) will not run until "
              "they are installed", file=sys.stderr)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


# ---------------------------------------------------------------------------------------------
# The lock and pip's settings, translated for uv


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_requirement(name: str) -> str:
    """The lock's entry for one package, its pin and hashes, as a requirements file's text."""
    lines, taking = [], False
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            locked_name = re.split(r"[=<>!~ \\;\[]", line, maxsplit=1)[0]
            taking = _canonical(locked_name) == _canonical(name)
        if taking and not line.lstrip().startswith("#"):
            lines.append(line)
    if not lines:
        raise SystemExit(f"{name} is not in {LOCK}: run `{LOCK_COMMAND}`")
    return "\n".join(lines) + "\n"


def parse_pip_config(text: str) -> dict[str, str]:
    """`pip config list` output (`global.index-url='...'`, `:env:.find-links='...'`) as
    option -> value: the install section over global, PIP_* variables over both, as pip does."""
    rank = {"global": 0, "install": 1, ":env:": 2}
    settings: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, raw = line.partition("=")
        section, _, option = name.rpartition(".")
        if not sep or section not in rank or rank[section] < ranks.get(option, -1):
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            continue
        settings[option], ranks[option] = str(value), rank[section]
    return settings


def pip_settings(python: Path) -> dict[str, str]:
    """The settings pip in this venv would install with (its config files, PIP_* variables)."""
    out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True,
                         text=True)
    return parse_pip_config(out.stdout) if out.returncode == 0 else {}


def uv_options(settings: dict[str, str], *, resolving: bool) -> tuple[list[str], dict[str, str]]:
    """uv's options and environment variables for pip's settings.

    Installing uses every index and find-links folder that pip would, taking a pinned file from
    whichever has it, as pip does (the lock's hashes say which files are acceptable). Resolving
    the lock uses the main index only, so that it records the hashes of every file of a release
    (a partial mirror lists only its own), and pip's constraint files, as pip-compile would.
    """
    args: list[str] = []
    env: dict[str, str] = {}
    if settings.get("index-url"):
        args += ["--index-url", settings["index-url"]]
    if resolving:
        for constraint in settings.get("constraint", "").split():
            args += ["--constraint", constraint]
    else:
        if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
            args.append("--no-index")
        for url in settings.get("extra-index-url", "").split():
            args += ["--extra-index-url", url]
        for location in settings.get("find-links", "").split():
            args += ["--find-links", location]
        args += ["--index-strategy", "unsafe-best-match"]
    for host in settings.get("trusted-host", "").split():
        args += ["--allow-insecure-host", host]
    if settings.get("cert"):
        env["SSL_CERT_FILE"] = settings["cert"]
    if settings.get("timeout") or settings.get("default-timeout"):
        env["UV_HTTP_TIMEOUT"] = settings.get("timeout") or settings["default-timeout"]
    if settings.get("proxy"):
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = settings["proxy"]
    return args, env


def _install_uv(python: Path) -> Path:
    """uv at the lock's version and hashes, installed by the venv's own pip (and its settings)."""
    locked = LOCK.exists()  # not yet when the first lock is made
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=VENV) as requirement:
        requirement.write(locked_requirement("uv") if locked else "uv\n")
        requirement.flush()
        _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "--no-deps", *(["--require-hashes"] if locked else []), "-r", requirement.name])
    return VENV / "bin" / "uv"


def _uv_command(python: Path, *, resolving: bool) -> tuple[list[str], list[str], dict[str, str]]:
    """uv, the index options for it, and its environment (what the caller set explicitly wins)."""
    uv = _install_uv(python)
    options, env = uv_options(pip_settings(python), resolving=resolving)
    return [str(uv), "pip"], options, {**env, **os.environ}


def _venv_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        if sys.version_info[:2] != tuple(map(int, LOCK_PYTHON.split("."))):
            print(f"warning: {LOCK} is locked for Python {LOCK_PYTHON}, this is "
                  f"{sys.version_info[0]}.{sys.version_info[1]}", file=sys.stderr)
        _run([sys.executable, "-m", "venv", str(VENV)])
    return python


def ensure_environment() -> Path:
    """Create and fill `.venv` if its stamp is stale; return the venv's python."""
    python = VENV / "bin" / "python"
    install_debian_packages()
    if STAMP.exists() and STAMP.read_text() == _stamp_value() and python.exists():
        return python
    python = _venv_python()
    uv, options, env = _uv_command(python, resolving=False)
    target = ["--python", str(python)]
    # numpy<2 is pinned in the project: nvidia-pytriton and motmetrics need it.
    # No --compile-bytecode: it compiled all 29,919 modules of the lock (65 s of a fresh
    # install on 2 cores) where the stack and the tests import about 5,600 of them. Python caches
    # each one's .pyc at its first import instead, because `reexec_in_venv` lets it write them.
    _run([*uv, "sync", *target, "--require-hashes", *options, str(LOCK)], env=env)
    _run([*uv, "install", *target, "--no-deps", *options, "-e", str(ROOT)], env=env)
    STAMP.write_text(_stamp_value())
    return python


def lock(upgrade: bool = False) -> None:
    """Resolve pyproject.toml (every extra) into the lock, for the platform it targets."""
    uv, options, env = _uv_command(_venv_python(), resolving=True)
    _run([*uv, "compile", "pyproject.toml", "--extra", "all",
          "--python-version", LOCK_PYTHON, "--python-platform", LOCK_PLATFORM,
          "--generate-hashes", "--custom-compile-command", LOCK_COMMAND,
          *(["--upgrade"] if upgrade else []), *options,
          "--output-file", str(LOCK.relative_to(ROOT))], env=env, cwd=ROOT)


def reexec_in_venv(argv: list[str]) -> None:
    if argv[:1] == ["test"]:  # one apt-get run for both sets; ensure_environment then finds none
        install_debian_packages(DEBIAN_PACKAGES + TEST_DEBIAN_PACKAGES)
    python = ensure_environment()
    env = {**os.environ, "VIRTUAL_ENV": str(VENV),
           "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONHOME", None)
    # These machines set PYTHONDONTWRITEBYTECODE, and uv writes no .pyc by default: then every
    # process of the stack and of the tests compiled torch, MLflow, Ultralytics... from source
    # at each import (the suite took about 25 min in a fresh clone against 16 with .pyc files).
    # The venv is ours, so its processes cache what they import (__pycache__ is git-ignored);
    # a later process, with or without the variable, reads those caches.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    os.execve(str(python), [str(python), "-m", "control_plane", *argv], env)


if __name__ == "__main__":
    if sys.argv[1:2] != ["lock"] or set(sys.argv[2:]) - {"--upgrade"}:
        raise SystemExit(f"usage: {LOCK_COMMAND} [--upgrade]")
    lock(upgrade="--upgrade" in sys.argv[2:])
