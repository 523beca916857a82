"""The npe2 manifest: valid, complete, and shipped in both an editable install and a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]
NPE2 = str(Path(sys.executable).with_name("npe2"))


def _npe2_validate(env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NPE2, "validate", "napari-ncc", "--imports"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_manifest_contributions():
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-ncc"
    assert {str(c) for c in manifest.categories} == {"Registration", "Measurement"}
    contributions = manifest.contributions
    [widget] = contributions.widgets
    assert widget.display_name == "NCC confidence"
    assert [m.command for m in contributions.menus["napari/layers/register"]] == [widget.command]
    [reader] = contributions.readers
    assert reader.accepts_directories
    assert {"*.zarr", "*.tif", "*.tiff", "*.ome.zarr"} <= set(reader.filename_patterns)
    [writer] = contributions.writers
    assert writer.layer_types == ["image"] and writer.filename_extensions == [".zarr"]
    assert [s.key for s in contributions.sample_data] == ["cell", "motorcycle"]


def test_editable_install_validates_with_imports():
    # The source tree's symlink makes the manifest part of the package for an editable install.
    link = ROOT / "src" / "napari_ncc" / "napari.yaml"
    assert link.resolve() == (ROOT / "napari.yaml").resolve()
    result = _npe2_validate()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_wheel_ships_the_manifest_and_validates_when_installed(tmp_path):
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling")
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *(str(ROOT), "-w", str(tmp_path / "dist")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = (tmp_path / "dist").glob("napari_ncc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert names.count("napari_ncc/napari.yaml") == 1
        manifest_path = tmp_path / "napari.yaml"
        manifest_path.write_bytes(archive.read("napari_ncc/napari.yaml"))
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    assert "[napari.manifest]\nnapari-ncc = napari_ncc:napari.yaml" in entry_points
    assert npe2.PluginManifest.from_file(manifest_path).name == "napari-ncc"

    # Install it (no index, no dependencies: they are those of this environment) into a
    # directory that comes first on sys.path, and validate what Python finds there.
    target = tmp_path / "site"
    install = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"),
            *("--target", str(target), str(wheel)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (target / "napari_ncc" / "napari.yaml").is_file()
    assert not (target / "napari_ncc" / "napari.yaml").is_symlink()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.metadata as md, napari_ncc; "
            "print(napari_ncc.__file__); print(md.distribution('napari-ncc')._path)",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout
    result = _npe2_validate(env)
    assert result.returncode == 0, result.stdout + result.stderr
