"""Debian's chromium driven by Playwright for Python, for the tests of the web pages (the
gateway's demo page, the control plane's release console); Playwright's own browser download
is never used. `browser` (tests/conftest.py) launches it once per test module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# As seen to work on these machines: no sandbox as root, and no background connections, which a
# closed network refuses many at a time.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (apt-get install chromium; "
           "`python3 -m control_plane test` installs it where it runs as root)")


def is_expected_http_error(text: str) -> bool:
    """Chromium logs every 4xx fetch as a console error; the error tests ask for those."""
    return text.startswith("Failed to load resource: the server responded with a status of 4")


def screenshot(page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot into the test's tmp_path, copied to /tmp/NAME to be looked at."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    shutil.copyfile(path, Path("/tmp") / name)
