"""The npe2 manifest: valid, complete, and shipped in both an editable install and a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]
NPE2 = str(Path(sys.executable).with_name("npe2"))


#: The Qt bindings napari runs on. napari's default (its `pyqt`, `qt` and `all` extras) is PyQt6.
QT_BINDINGS = {"pyqt5", "pyqt6", "pyside2", "pyside6"}
NAPARI_EXTRAS_WITH_A_BINDING = {"all", "qt", "pyqt", "pyside", *QT_BINDINGS}


def _requirements(extra: str) -> list[Requirement]:
    """The requirements an extra of napari-ncc brings, its self-references (napari-ncc[qt])
    followed; a marker-free reading, which is all the extras here use."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    found = []
    for line in extras[extra]:
        requirement = Requirement(line)
        if requirement.name == "napari-ncc":
            for inner in sorted(requirement.extras):
                found += _requirements(inner)
        else:
            found.append(requirement)
    return found


def _bindings(requirements: list[Requirement]) -> set[str]:
    """The Qt bindings the requirements name, directly or through a napari extra."""
    bindings = set()
    for requirement in requirements:
        name = requirement.name.lower()
        if name in QT_BINDINGS:
            bindings.add(name)
        elif name == "napari":
            bindings |= {e.lower() for e in requirement.extras} & NAPARI_EXTRAS_WITH_A_BINDING
    return bindings


def test_the_napari_extra_leaves_the_qt_binding_to_the_user():
    # napari asks plugins not to require a binding: a pip PyQt next to a conda one, or two
    # bindings in one environment, break it. `pip install napari-ncc[napari]` into an
    # environment with napari keeps whatever binding napari already runs on.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(line) for line in project["dependencies"]]
    assert _bindings(core) == set()
    assert _bindings(_requirements("napari")) == set()
    assert "napari" in {r.name for r in _requirements("napari")}


@pytest.mark.parametrize("extra", ["qt", "all", "test"])
def test_the_qt_and_test_extras_bring_pyqt6_alone(extra):
    # napari 0.9 deprecates PyQt5 ("will be removed in fall of 2026"); PyQt6 is its default.
    # Exactly one binding, named: napari's own `qt`/`all` extras follow napari's default,
    # which may change under us.
    assert _bindings(_requirements(extra)) == {"pyqt6"}


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
    zarr_writer, ome_writer = contributions.writers
    assert zarr_writer.layer_types == ["image"] and zarr_writer.filename_extensions == [".zarr"]
    assert ome_writer.layer_types == ["image"]
    assert ome_writer.filename_extensions == [".ome.zarr"]
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
