"""The package as built: the wheel carries every file of `cds_plugin/` (the default model included), the
LICENSE that pyproject's SPDX `license` names, and `python -m cds_plugin`.

Built offline from a copy of the tree with the test environment's setuptools (no build isolation, no
index). Installing the wheel into a fresh venv and serving from it needs a package index for its
dependencies, so that is a CI step (.ci/wheel-check), not a test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_is_the_spdx_string_and_the_file_holds_its_text() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice pointing at it


def _package_files() -> set[str]:
    """Every file of the package in the tree, as a wheel names it (bytecode left out)."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "cds_plugin").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "cds_plugin", src / "cds_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", *offline, "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = dist.glob("cds_plugin-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_carries_every_package_file_and_the_default_model(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    missing = sorted(_package_files() - names)
    assert not missing, f"not in the wheel (add their pattern to [tool.setuptools.package-data]): {missing}"
    model = {n for n in names if n.startswith("cds_plugin/model/default/")}
    assert {"cds_plugin/model/default/model.safetensors", "cds_plugin/model/default/labels.json"} <= model
    assert "cds_plugin/__main__.py" in names
    assert not [n for n in names if not n.startswith(("cds_plugin/", "cds_plugin-"))], "stray top-level files"


def test_wheel_metadata_names_the_license(wheel: zipfile.ZipFile) -> None:
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    lines = wheel.read(metadata).decode("utf-8").splitlines()
    assert "License-Expression: Apache-2.0" in lines
    assert "License-File: LICENSE" in lines
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
