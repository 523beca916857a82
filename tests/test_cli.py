"""End-to-end tests of the ``napari-ncc`` command, run through the installed console script.

Inputs are real files written here (TIFF with tifffile, zarr with zarr); the written maps
are checked against the brute-force Pearson reference of ``tests/reference.py``, computed
on the pair shifted by the shift the command printed (which is itself checked against the
known displacement).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from scipy import ndimage
from skimage import data

from reference import brute_force_ncc

#: The content of the moving image is displaced by this much (rows, columns) ...
DISPLACEMENT = (2.6, -3.4)
#: ... so the shift that registers it back onto the reference is minus that.
TRUE_SHIFT = tuple(-d for d in DISPLACEMENT)
SHAPE = (96, 112)


def _console_script() -> str:
    beside = Path(sys.executable).with_name("napari-ncc")
    if beside.exists():
        return str(beside)
    found = shutil.which("napari-ncc")
    if found is None:
        pytest.skip("the napari-ncc console script is not installed")
    return found


CLI = _console_script()


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, status: int, *needles: str):
    assert result.returncode == status, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A textured float32 image and a copy whose content moved by DISPLACEMENT."""
    reference = data.camera()[100 : 100 + SHAPE[0], 200 : 200 + SHAPE[1]].astype(np.float32)
    moving = ndimage.shift(reference, DISPLACEMENT, order=3, mode="nearest")
    return reference, moving.astype(np.float32)


@pytest.fixture(scope="module")
def tiff_pair(pair, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiff")
    paths = folder / "reference.tif", folder / "moving.tif"
    for path, image in zip(paths, pair, strict=True):
        tifffile.imwrite(path, image)
    return paths


@pytest.fixture(scope="module")
def zarr_pair(pair, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("zarr")
    paths = folder / "reference.zarr", folder / "moving.zarr"
    for path, image in zip(paths, pair, strict=True):
        store = zarr.open_array(path, mode="w", shape=image.shape, chunks=(40, 48), dtype="f4")
        store[...] = image
    return paths


def write_ome_zarr(path: Path, image: np.ndarray) -> None:
    """A two-level OME-Zarr (0.5) multiscale image: full resolution and 2x2 means."""
    group = zarr.open_group(path, mode="w")
    h, w = (n // 2 * 2 for n in image.shape)
    levels = [image, image[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))]
    datasets = []
    for i, level in enumerate(levels):
        array = group.create_array(str(i), shape=level.shape, chunks=(32, 32), dtype="f4")
        array[...] = level
        scale = {"type": "scale", "scale": [2.0**i, 2.0**i]}
        datasets.append({"path": str(i), "coordinateTransformations": [scale]})
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": datasets}],
    }


def read_map(path: Path) -> np.ndarray:
    if path.suffix in (".tif", ".tiff"):
        return tifffile.imread(path)
    return np.asarray(zarr.open_array(path, mode="r")[...])


def interior(image: np.ndarray, margin: int) -> np.ndarray:
    return image[margin:-margin, margin:-margin]


# ------------------------------------------------------------------------------- compare


@pytest.mark.parametrize("output", ["ncc.zarr", "ncc.tif"])
def test_compare_tiff_inputs_matches_brute_force_ncc_of_the_registered_pair(
    tiff_pair, pair, tmp_path, output
):
    out = tmp_path / output
    result = run("compare", *tiff_pair, "-o", out, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    shift = report["registration"]["shift"]
    np.testing.assert_allclose(shift, TRUE_SHIFT, atol=0.15)

    written = read_map(out)
    assert written.shape == SHAPE and written.dtype == np.float32
    reference, moving = pair
    registered = ndimage.shift(moving.astype(np.float64), shift, order=1, mode="nearest")
    expected = brute_force_ncc(reference, registered, 3)
    # Away from the border strip the shift brought in, the map is the plain Pearson map.
    margin = 3 + int(np.ceil(np.max(np.abs(shift)))) + 1
    np.testing.assert_allclose(interior(written, margin), interior(expected, margin), atol=1e-4)
    # The pair matches once registered, so most of it is confident.
    assert report["summary"]["confident"] > 0.8
    assert report["summary"]["mean"] == pytest.approx(
        float(np.mean(written[written != 0])), abs=1e-4
    )


def test_compare_zarr_inputs_without_registration_is_the_map_of_the_raw_pair(
    zarr_pair, pair, tmp_path
):
    out = tmp_path / "raw.zarr"
    result = run(
        "compare", *zarr_pair, "-o", out, "--no-register", "--radius", "2", "--window", "gaussian"
    )
    assert result.returncode == 0, result.stderr
    assert "registration: skipped" in result.stdout
    expected = brute_force_ncc(*pair, 2, window="gaussian")
    np.testing.assert_allclose(read_map(out), expected, atol=1e-4)
    fraction = float(re.search(r"confident \(NCC > 0\.5\) ([\d.]+)%", result.stdout)[1])
    # Printed to 0.1% (0.05 of rounding); pixels within the map's 1e-4 of the threshold
    # may fall on either side, depending on the machine's rounding.
    ambiguous = 100 * np.mean(np.abs(expected - 0.5) <= 1e-4)
    assert abs(fraction - 100 * np.mean(expected > 0.5)) <= 0.05 + ambiguous + 1e-9


def test_compare_ome_zarr_pyramids(pair, tmp_path):
    paths = tmp_path / "reference.ome.zarr", tmp_path / "moving.ome.zarr"
    for path, image in zip(paths, pair, strict=True):
        write_ome_zarr(path, image)
    out = tmp_path / "ncc.zarr"
    result = run("compare", *paths, "-o", out, "--json", "-q", "--window", "gaussian")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["axes_names"] == ["y", "x"]
    shift = report["registration"]["shift"]
    np.testing.assert_allclose(shift, TRUE_SHIFT, atol=0.15)
    reference, moving = pair
    registered = ndimage.shift(moving.astype(np.float64), shift, order=1, mode="nearest")
    expected = brute_force_ncc(reference, registered, 3, window="gaussian")
    np.testing.assert_allclose(interior(read_map(out), 8), interior(expected, 8), atol=1e-4)


def test_compare_prints_the_shift_in_text(zarr_pair, tmp_path):
    result = run("compare", *zarr_pair, "-o", tmp_path / "ncc.zarr")
    assert result.returncode == 0, result.stderr
    match = re.search(r"^shift: y ([-+][\d.]+), x ([-+][\d.]+) px", result.stdout, re.M)
    assert match, result.stdout
    np.testing.assert_allclose([float(match[1]), float(match[2])], TRUE_SHIFT, atol=0.15)
    # Not a terminal: log lines, no progress bar.
    assert "registering" in result.stderr
    assert "[#" not in result.stderr


def test_compare_refuses_to_overwrite_unless_asked(zarr_pair, tmp_path):
    out = tmp_path / "ncc.tif"
    out.write_bytes(b"precious")
    result = run("compare", *zarr_pair, "-o", out)
    assert_one_line_error(result, 1, "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"

    result = run("compare", *zarr_pair, "-o", out, "--overwrite", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert read_map(out).shape == SHAPE


def test_missing_input_is_one_line(zarr_pair, tmp_path):
    result = run("compare", tmp_path / "nope.tif", zarr_pair[1], "-o", tmp_path / "o.zarr")
    assert_one_line_error(result, 1, "REFERENCE", "nope.tif", "does not exist")
    assert not (tmp_path / "o.zarr").exists()


def test_corrupt_input_is_one_line(zarr_pair, tmp_path):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00 this is not a TIFF")
    result = run("compare", zarr_pair[0], bad, "-o", tmp_path / "o.zarr")
    assert_one_line_error(result, 1, "MOVING", "corrupt.tif")


@pytest.mark.parametrize(
    ("radius", "status", "needle"),
    [("0", 2, "must be an integer >= 1"), ("abc", 2, "'abc'"), ("200", 1, "radius 200")],
)
def test_bad_radius_is_one_line(zarr_pair, tmp_path, radius, status, needle):
    result = run("compare", *zarr_pair, "-o", tmp_path / "o.zarr", "--radius", radius)
    assert_one_line_error(result, status, needle)


def test_bad_arguments_are_one_line(zarr_pair, tmp_path):
    assert_one_line_error(run("compare", *zarr_pair), 2, "-o/--output")
    result = run("compare", *zarr_pair, "-o", tmp_path / "o.png")
    assert_one_line_error(result, 1, ".zarr", ".tif")
    result = run("compare", *zarr_pair, "-o", tmp_path / "o.zarr", "--window", "hann")
    assert_one_line_error(result, 2, "--window", "hann")


def test_inputs_of_different_shapes_are_one_line(zarr_pair, tmp_path):
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((10, 10), np.float32))
    result = run("compare", zarr_pair[0], small, "-o", tmp_path / "o.zarr")
    assert_one_line_error(result, 1, "same shape", "(96, 112)", "(10, 10)")


def test_unrelated_images_warn_that_the_registration_is_unreliable(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, rng.random((64, 64)).astype(np.float32))
    result = run("compare", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "o.zarr")
    assert result.returncode == 0, result.stderr
    assert "registration is UNRELIABLE" in result.stdout
    warning = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "unreliable" in warning[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_option():
    result = run("compare", "--help")
    assert result.returncode == 0
    for option in (
        "--output",
        "--radius",
        "--window",
        "--no-register",
        "--per-plane",
        "--chunks",
        "--scheduler",
        "--overwrite",
        "--fill-value",
        "--mode",
        "--quiet",
    ):
        assert option in result.stdout
    assert "demo" in run("--help").stdout


def test_per_plane_registers_every_plane_of_a_stack(tmp_path):
    base = data.camera()[150:214, 250:330].astype(np.float32)
    displacements = [(0.0, 0.0), (1.5, -2.25), (-2.75, 1.0)]
    reference = np.stack([base] * 3)
    moving = np.stack([ndimage.shift(base, d, order=3, mode="nearest") for d in displacements])
    # Three grey planes, said so: without photometric, tifffile stores a (3, y, x) array
    # as one planar RGB page (and warns).
    stack = {"photometric": "minisblack", "metadata": {"axes": "TYX"}}
    tifffile.imwrite(tmp_path / "ref.tif", reference, **stack)
    tifffile.imwrite(tmp_path / "mov.tif", moving.astype(np.float32), **stack)
    out = tmp_path / "stack.zarr"
    result = run(
        "compare", tmp_path / "ref.tif", tmp_path / "mov.tif", "-o", out, "--per-plane", "0",
        "--json", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shifts = np.asarray(json.loads(result.stdout)["registration"]["shifts"])
    np.testing.assert_allclose(shifts[:, 1:], -np.asarray(displacements), atol=0.15)
    np.testing.assert_array_equal(shifts[:, 0], 0)

    written = read_map(out)
    for t in range(3):
        registered = ndimage.shift(moving[t].astype(np.float64), shifts[t, 1:], order=1)
        expected = brute_force_ncc(reference[t], registered, 3)
        np.testing.assert_allclose(interior(written[t], 7), interior(expected, 7), atol=1e-4)


def test_rgb_inputs_are_compared_as_luminance(tmp_path):
    from skimage import io

    rng = np.random.default_rng(0)
    a = data.astronaut()[:80, :96]
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    io.imsave(tmp_path / "a.png", a, check_contrast=False)
    io.imsave(tmp_path / "b.png", b, check_contrast=False)
    out = tmp_path / "rgb.tif"
    result = run("compare", tmp_path / "a.png", tmp_path / "b.png", "-o", out, "--no-register")
    assert result.returncode == 0, result.stderr
    bt709 = np.array([0.2125, 0.7154, 0.0721])
    expected = brute_force_ncc(a @ bt709, b @ bt709, 3)
    np.testing.assert_allclose(read_map(out), expected, atol=1e-4)


def test_scheduler_address_runs_on_a_distributed_cluster(zarr_pair, pair, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        out = tmp_path / "ncc.zarr"
        result = run(
            "compare",
            *zarr_pair,
            "-o",
            out,
            "--no-register",
            "--scheduler",
            cluster.scheduler_address,
        )
        assert result.returncode == 0, result.stderr
        assert "connected to the Dask scheduler" in result.stderr
    np.testing.assert_allclose(read_map(out), brute_force_ncc(*pair, 3), atol=1e-4)


# ------------------------------------------------------------------ signals and leftovers


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two 12000 x 12000 zarr arrays with no chunk written (all zeros: free on disk), so
    that computing their map takes long enough to be stopped in the middle of writing."""
    folder = tmp_path_factory.mktemp("big")
    paths = folder / "a.zarr", folder / "b.zarr"
    for path in paths:
        zarr.open_array(path, mode="w", shape=(12000, 12000), chunks=1024, dtype="f4")
    return paths


def start_writing(big_pair, out: Path) -> tuple[subprocess.Popen, list[Path]]:
    """Start a compare writing to `out`; return once its temporary output exists."""
    proc = subprocess.Popen(
        [CLI, "compare", *map(str, big_pair), "-o", str(out), "--no-register", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pattern = f".{out.name}.tmp-*"
    for _ in range(6000):  # up to ~5 minutes on a busy machine
        temporaries = list(out.parent.glob(pattern))
        if temporaries or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert temporaries, "the command never started writing: " + str(proc.communicate())
    return proc, temporaries


@pytest.mark.parametrize(
    ("signum", "status", "output"),
    [(signal.SIGTERM, 143, "out.zarr"), (signal.SIGHUP, 129, "out.tif")],
)
def test_sigterm_and_sighup_stop_cleanly(big_pair, tmp_path, signum, status, output):
    out = tmp_path / output
    proc, _ = start_writing(big_pair, out)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no map, no temporary


def test_a_later_run_removes_what_a_killed_run_left_and_nothing_else(
    big_pair, zarr_pair, tmp_path
):
    out = tmp_path / "ncc.zarr"
    proc, (leftover,) = start_writing(big_pair, out)
    proc.kill()  # SIGKILL: no clean-up possible
    proc.communicate(timeout=300)
    assert leftover.exists()
    # The name says who wrote it: host, then the process id.
    match = re.fullmatch(r"\.ncc\.zarr\.tmp-(.+)-(\d+)-([0-9a-f]{12})", leftover.name)
    assert match and int(match[2]) == proc.pid, leftover.name
    host, token = match[1], match[3]
    # Not ours to remove: a write still under way (this test's process is alive), another
    # output's leftover, a write from another machine, names of another pattern.
    keep = [
        f".ncc.zarr.tmp-{host}-{os.getpid()}-{token}",
        f".other.zarr.tmp-{host}-{proc.pid}-{token}",
        f".ncc.zarr.tmp-another_host-{proc.pid}-{token}",
        f".ncc.zarr.tmp-{proc.pid}",
        ".ncc.zarr.tmp-notes.txt",
    ]
    for name in keep:
        (tmp_path / name).mkdir()

    result = run("compare", *zarr_pair, "-o", out)
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert "removed" in result.stderr and leftover.name in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "ncc.zarr"])


# ------------------------------------------------------------------- messages and output


def write_stack(path: Path, planes: int) -> None:
    base = data.camera()[150:214, 250:330].astype(np.float32)
    stack = np.stack([np.roll(base, t, axis=1) for t in range(planes)])
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "TYX"})


def test_a_stack_read_as_a_volume_gets_a_hint(tmp_path):
    write_stack(tmp_path / "five.tif", 5)
    result = run(
        "compare", tmp_path / "five.tif", tmp_path / "five.tif", "-o", tmp_path / "o.zarr", "-q"
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "warning" in line and "5 planes" in line and "--per-plane 0" in line, line
    assert "--radius 0,3,3" in line

    write_stack(tmp_path / "two.tif", 2)
    result = run("compare", tmp_path / "two.tif", tmp_path / "two.tif", "-o", tmp_path / "t.zarr")
    assert_one_line_error(result, 1, "too large for axis 0", "--per-plane 0")

    # With --per-plane, nothing to say.
    result = run(
        "compare", tmp_path / "five.tif", tmp_path / "five.tif", "-o", tmp_path / "p.zarr",
        "-q", "--per-plane", "0",
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_file_that_fails_while_computing_is_named(pair, tmp_path):
    full, truncated = tmp_path / "full.tif", tmp_path / "truncated.tif"
    tifffile.imwrite(full, pair[0])
    content = full.read_bytes()
    truncated.write_bytes(content[: len(content) * 6 // 10])  # the header says more
    result = run("compare", full, truncated, "-o", tmp_path / "o.zarr", "-q")
    assert_one_line_error(result, 1, "truncated.tif")


def test_no_negative_zero_and_radii_as_typed(tmp_path):
    image = data.camera()[:128, :128].astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", image)
    # Moved along y only: the x shift is zero up to rounding, of either sign.
    tifffile.imwrite(tmp_path / "b.tif", np.roll(image, 3, axis=0))
    result = run("compare", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "o.zarr")
    assert result.returncode == 0, result.stderr
    match = re.search(r"^shift: y ([-+][\d.]+), x \+0\.00 px", result.stdout, re.M)
    assert match and float(match[1]) == pytest.approx(-3, abs=0.1), result.stdout
    assert "-0.00" not in result.stdout + result.stderr

    result = run(
        "compare", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "r.zarr",
        "--radius", "2,2", "--no-register",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "radius 2,2 (box window)" in result.stdout, result.stdout


def run_in_terminal(*args, cwd) -> bytes:
    """What a terminal shows of a run: stdout and stderr through a pseudo-terminal."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [CLI, *map(str, args)], stdin=follower, stdout=follower, stderr=follower, cwd=cwd
    )
    os.close(follower)
    output = []
    while True:
        ready, _, _ = select.select([leader], [], [], 300)
        if not ready:
            proc.kill()
            raise AssertionError("no output from the command for 5 minutes")
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the command has gone: the terminal closed
            break
        if not chunk:
            break
        output.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, b"".join(output)
    return b"".join(output)


def test_a_terminal_gets_no_stray_escape_codes(zarr_pair, tmp_path):
    shown = run_in_terminal("compare", *zarr_pair, "-o", "ncc.tif", cwd=tmp_path)
    assert b"map: ncc.tif" in shown
    assert b"\x1b[0m" not in shown, shown[-200:]


def test_tiff_output_is_tiled_and_carries_the_parameters(zarr_pair, tmp_path):
    out = tmp_path / "ncc.tif"
    result = run("compare", *zarr_pair, "-o", out, "-q", "--radius", "2")
    assert result.returncode == 0, result.stderr
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].is_tiled
        assert tif.shaped_metadata[0]["napari_ncc"]["radius"] == 2


# ---------------------------------------------------------------------------------- demo


def test_demo_writes_the_map_and_a_preview(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "shift:" in result.stdout and "NCC map" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    ncc = read_map(out / "ncc.zarr")
    assert ncc.shape == tuple(summary["shape"])
    np.testing.assert_allclose(
        summary["registration"]["shift"], summary["sample_info"]["shift"], atol=0.3
    )
    with Image.open(out / "preview.png") as picture:
        width, height = picture.size
        assert picture.mode == "RGB"
    assert width > 3 * ncc.shape[1] and height > ncc.shape[0]

    # A second run replaces the demo's own files ...
    assert run("demo", "-o", out, "--quiet").returncode == 0
    # ... but not someone else's.
    other = tmp_path / "other"
    other.mkdir()
    (other / "preview.png").write_bytes(b"mine")
    result = run("demo", "-o", other)
    assert_one_line_error(result, 1, "preview.png", "--overwrite")
    assert (other / "preview.png").read_bytes() == b"mine"
