"""Bring a fresh machine to a working environment, with nothing but the standard library.

`python3 -m control_plane <command>` runs this first: it creates `.venv/` beside the checkout,
installs the project with every extra, the Debian packages perf_analyzer needs (where we are
root), and then re-executes the same command inside the environment. A stamp file keyed on the
project's dependency list makes the second run a no-op, so the README commands stay fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
STAMP = VENV / ".visionguard-installed"
# libb64-0d: perf_analyzer links against libb64.so.0d. prometheus: promtool checks the alert rules
# and a real Prometheus scrapes the stack in the tests.
DEBIAN_PACKAGES = ("libb64-0d", "prometheus")


def _stamp_value() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "control_plane/environment.py"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def inside_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def _missing_debian_packages() -> list[str]:
    missing = []
    for pkg in DEBIAN_PACKAGES:
        probe = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if "install ok installed" not in probe.stdout:
            missing.append(pkg)
    return missing


def install_debian_packages() -> None:
    if not shutil.which("dpkg-query"):
        return
    missing = _missing_debian_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        print(f"warning: Debian packages {missing} are missing and we are not root: "
              "perf_analyzer and promtool will not run until they are installed", file=sys.stderr)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def ensure_environment() -> Path:
    """Create and fill `.venv` if its stamp is stale; return the venv's python."""
    python = VENV / "bin" / "python"
    install_debian_packages()
    if STAMP.exists() and STAMP.read_text() == _stamp_value() and python.exists():
        return python
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    _run([*pip, "-q", "--upgrade", "pip", "wheel", "setuptools"])
    # numpy<2 is pinned in the project: nvidia-pytriton and motmetrics need it.
    _run([*pip, "-e", f"{ROOT}[all]"])
    STAMP.write_text(_stamp_value())
    return python


def reexec_in_venv(argv: list[str]) -> None:
    python = ensure_environment()
    env = {**os.environ, "VIRTUAL_ENV": str(VENV),
           "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONHOME", None)
    os.execve(str(python), [str(python), "-m", "control_plane", *argv], env)
