"""The layering holds: import contracts (import-linter, configured in pyproject.toml) pass on the
tree, and the checker does see a violation when one exists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is in the dev extra"
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_are_kept():
    out = lint_imports()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_the_checker_sees_a_real_import(tmp_path):
    """A contract that the tree breaks on purpose (releases does import training, for the
    accuracy gate): the checker must report it, or the contracts above prove nothing."""
    config = tmp_path / "contracts.ini"
    config.write_text("[importlinter]\nroot_packages =\n    control_plane\n\n"
                      "[importlinter:contract:probe]\nname = probe\ntype = forbidden\n"
                      "source_modules =\n    control_plane.releases\n"
                      "forbidden_modules =\n    control_plane.training\n")
    out = lint_imports("--config", str(config))
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout + out.stderr
    assert "control_plane.releases.gates -> control_plane.training" in out.stdout, out.stdout


def test_every_control_plane_package_says_its_job():
    for init in (ROOT / "control_plane").glob("*/__init__.py"):
        text = init.read_text()
        assert text.startswith('"""') and "import" in text, f"{init}: docstring with its job " \
                                                             "and what it may import"
