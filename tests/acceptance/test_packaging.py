"""Packaging: `pip install` adds one top-level package, `apievents`, and it runs from there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
LOCAL = (".venv", ".git", "build", "dist", "*.egg-info", ".demo", "__pycache__", ".*_cache")


def test_the_wheel_installs_only_the_apievents_package(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*LOCAL))
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    (wheel,) = out.glob("apievents-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "apievents",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    for folder in ("api", "common", "producer", "worker", "committer"):
        assert f"apievents/{folder}/__init__.py" in names
    assert "apievents/common/schema/0001_initial.sql" in names

    # Installed on its own, away from the source tree, it imports and finds its schema files.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import apievents.cli, apievents.common.migrate as m; "
        "print(apievents.cli.__file__); print(len(m._scripts()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    path, scripts = done.stdout.split()
    assert Path(path).is_relative_to(site)
    assert int(scripts) >= 4
