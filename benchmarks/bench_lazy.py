"""Benchmark of the lazy, chunked local NCC (issue 8). Prints figures; asserts nothing.

1. Throughput of the chunked path (2048x2048 chunks, threaded scheduler) against the
   in-memory kernel on the same float32 pair (target: ratio >= 0.8).
2. Out of core: two uint16 zarr inputs made on disk by this script, the NCC map stored to
   zarr by plain Dask (``local_ncc(da.from_zarr(a), da.from_zarr(b), 3).to_zarr(out)``),
   by the whole pipeline (``write_ncc`` from paths: read -> subpixel shift -> NCC ->
   store), and, as the baseline, by a plain ``map_overlap(depth=3)`` graph around the same
   core kernel. Each run is a fresh subprocess whose peak resident memory is reported
   (target: <= 1.5 GB, flat with the image size).
3. How the cost grows with the number of pixels (should be linear).

Usage::

    python benchmarks/bench_lazy.py            # 16384^2 throughput; 4096^2 .. 30000^2 on disk
    python benchmarks/bench_lazy.py --quick    # small sizes, a minute or so

The full run writes about 4 GB (inputs) plus one output at a time under
``benchmarks/_data`` and deletes it at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CHUNK = 2048
RADIUS = 3
SHIFT = (2.3, -1.7)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ``getrusage``'s ru_maxrss, it
    does not inherit the parent's peak across fork + exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- 1. throughput --------------------------------------------------------------------


def bench_throughput(n: int, repeats: int = 5) -> None:
    import dask.array as da

    from napari_ncc._lazy import local_ncc
    from napari_ncc._ncc import local_ncc as in_memory

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = a + np.float32(0.5) * rng.random((n, n), dtype=np.float32)
    in_memory(a[:256, :256], b[:256, :256], RADIUS)  # compile / warm up

    x0, x1 = da.from_array(a, chunks=CHUNK), da.from_array(b, chunks=CHUNK)
    lazy = local_ncc(x0, x1, radius=RADIUS)
    out = np.empty((n, n), np.float32)

    def chunked_store():
        # Each block written in place by the worker that computed it.
        da.store(local_ncc(x0, x1, radius=RADIUS), out, lock=False, scheduler="threads")

    def chunked_store_new_target():
        # Like the in-memory kernel, which allocates its result: the target's pages are
        # faulted in during the run.
        target = np.empty((n, n), np.float32)
        da.store(local_ncc(x0, x1, radius=RADIUS), target, lock=False, scheduler="threads")

    runs = {
        "memory": lambda: in_memory(a, b, RADIUS),
        "store": chunked_store,
        "store_new": chunked_store_new_target,
        "compute": lambda: local_ncc(x0, x1, radius=RADIUS).compute(scheduler="threads"),
    }
    # Interleaved, best of `repeats`: the machine may be shared, so noise hits all alike.
    times: dict = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    t_mem, t_store, t_new, t_compute = (min(times[k]) for k in runs)
    error = float(np.abs(out - in_memory(a, b, RADIUS)).max())
    mp = n * n / 1e6
    print(f"\n1. Throughput, {n}x{n} float32 pair, radius {RADIUS}, {os.cpu_count()} cores")
    print(
        f"   input chunks {x0.chunksize}, output blocks {lazy.chunksize} "
        f"({lazy.npartitions} tasks), dask threaded scheduler, best of {repeats} interleaved"
    )
    print(f"   in-memory kernel          : {t_mem:7.2f} s  {mp / t_mem:7.1f} MP/s")
    print(f"   chunked ({CHUNK}^2), da.store : {t_store:7.2f} s  {mp / t_store:7.1f} MP/s")
    print(f"   chunked, da.store, new target: {t_new:7.2f} s  {mp / t_new:7.1f} MP/s")
    print(f"   chunked, .compute()       : {t_compute:7.2f} s  {mp / t_compute:7.1f} MP/s")
    print(
        f"   ratio chunked / in-memory throughput: {t_mem / t_store:.2f} (store), "
        f"{t_mem / t_new:.2f} (store, target allocated in the run), "
        f"{t_mem / t_compute:.2f} (compute, incl. dask's final concatenation)  (target >= 0.8)"
    )
    medians = {k: float(np.median(v)) for k, v in times.items()}
    print(
        f"   medians: in-memory {medians['memory']:.2f} s, store {medians['store']:.2f} s "
        f"(ratio {medians['memory'] / medians['store']:.2f})"
    )
    print(f"   stored map vs in-memory map: max |difference| {error:.1e}")
    bench_stages(a, b, x0, x1, lazy, out)


def bench_stages(a, b, x0, x1, lazy, out, repeats: int = 3) -> None:
    """Cost of each stage of a chunked block, one thread, summed over the blocks."""
    from napari_ncc import _lazy
    from napari_ncc._blocks import block_boxes, borrowed_contiguous, box_slices
    from napari_ncc._borders import border_index_map
    from napari_ncc._ncc import ncc_block, plan_ncc
    from napari_ncc._sources import find_source

    plan = plan_ncc(a.shape, b.shape, RADIUS)
    (_, source0), (_, source1) = find_source(x0), find_source(x1)
    blocks = list(block_boxes(lazy.chunks))
    stages = ("read (view)", "copy, reused buffer", "copy, fresh array", "kernel", "place")
    best = dict.fromkeys(stages, np.inf)
    for _ in range(repeats):
        total = dict.fromkeys(stages, 0.0)
        for _, box in blocks:
            runs, maps = _lazy._block_reads(plan, box)
            region = tuple(rs[0] for rs in runs)  # one run per axis (reflect mode)
            t0 = time.perf_counter()
            views = (source0[box_slices(region)], source1[box_slices(region)])
            t1 = time.perf_counter()
            with borrowed_contiguous(*views) as (block0, block1):
                t2 = time.perf_counter()
                result = ncc_block(block0, block1, plan, maps, n_threads=1)
                t3 = time.perf_counter()
            out[box_slices(box)] = result
            t4 = time.perf_counter()
            fresh = [np.ascontiguousarray(v) for v in views]  # what a plain read costs
            t5 = time.perf_counter()
            del fresh, result
            for stage, dt in zip(
                stages, (t1 - t0, t2 - t1, t5 - t4, t3 - t2, t4 - t3), strict=True
            ):
                total[stage] += dt
        best = {k: min(best[k], total[k]) for k in stages}
    maps = [
        border_index_map(n, 0, n, r, plan.mode)
        for n, r in zip(plan.shape, plan.radius, strict=True)
    ]
    t_kernel = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        ncc_block(a, b, plan, maps, n_threads=1)
        t_kernel = min(t_kernel, time.perf_counter() - t0)
    n_blocks = len(blocks)
    print(f"   stages, one thread, over the {n_blocks} blocks (best of {repeats}):")
    for stage in stages:
        note = "  (not on the chunked path: the old way)" if "fresh" in stage else ""
        print(
            f"     {stage:20s}: {best[stage]:6.2f} s  "
            f"{best[stage] / n_blocks * 1e3:6.2f} ms/block{note}"
        )
    used = sum(best[k] for k in stages if "fresh" not in k)
    print(
        f"     chunked total       : {used:6.2f} s;  in-memory kernel, one thread: "
        f"{t_kernel:6.2f} s  (ratio {t_kernel / used:.2f})"
    )


# --- 2. out of core -------------------------------------------------------------------


def make_input(path: str, n: int, seed: int) -> None:
    """A uint16 zarr image with smooth structure and noise, written chunk by chunk."""
    import dask.array as da

    if os.path.exists(path):
        return

    def block(block_info=None):
        info = block_info[None]
        (y0, y1), (x0, x1) = info["array-location"]
        rng = np.random.default_rng([seed, y0, x0])
        y = np.arange(y0, y1, dtype=np.float32)[:, None]
        x = np.arange(x0, x1, dtype=np.float32)[None, :]
        smooth = 3000 * np.sin(y / 37 + seed) * np.cos(x / 53)
        noise = rng.integers(0, 400, (y1 - y0, x1 - x0))
        return (20000 + smooth + noise).astype(np.uint16)

    axis = (CHUNK,) * (n // CHUNK) + ((n % CHUNK,) if n % CHUNK else ())
    meta = np.empty((0, 0), np.uint16)
    image = da.map_blocks(block, chunks=(axis, axis), dtype=np.uint16, meta=meta)
    tmp = path + ".tmp"
    image.to_zarr(tmp, overwrite=True)
    os.replace(tmp, path)


def child(kind: str, n: int, data: str) -> None:
    """Runs in a fresh process: store the NCC map of the size-n pair, print JSON figures."""
    import dask
    import dask.array as da

    from napari_ncc import Registration
    from napari_ncc._io import write_ncc
    from napari_ncc._lazy import local_ncc
    from napari_ncc._ncc import ncc_block, plan_ncc

    a_path, b_path = (os.path.join(data, f"{n}_{k}.zarr") for k in "ab")
    out = os.path.join(data, f"{n}_out_{kind}.zarr")
    shutil.rmtree(out, ignore_errors=True)
    # Load the compiled kernels (uint16 and float32 specialisations) before timing.
    tiny = np.zeros((8, 8), np.uint16)
    warm_plan = plan_ncc(tiny.shape, tiny.shape, RADIUS)
    warm_maps = [np.clip(np.arange(-RADIUS, 8 + RADIUS), 0, 7)] * 2
    ncc_block(tiny, tiny, warm_plan, warm_maps)
    ncc_block(tiny, tiny.astype(np.float32), warm_plan, warm_maps)
    start_rss = peak_rss_mb()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        if kind == "plain":
            local_ncc(da.from_zarr(a_path), da.from_zarr(b_path), radius=RADIUS).to_zarr(out)
        elif kind == "pipeline":
            write_ncc(
                a_path,
                b_path,
                out,
                radius=RADIUS,
                registration=Registration(shift=SHIFT),
                progress=False,
            )
        elif kind == "overlap":
            a, b = da.from_zarr(a_path), da.from_zarr(b_path)
            plan = plan_ncc(a.shape, b.shape, RADIUS)

            def kernel(x, y):  # the core kernel on an overlapped block (halo trimmed after)
                maps = [np.clip(np.arange(-RADIUS, s + RADIUS), 0, s - 1) for s in x.shape]
                return ncc_block(x, y, plan, maps)

            da.map_overlap(
                kernel, a, b, depth=RADIUS, boundary="reflect", dtype=np.float32
            ).to_zarr(out)
        else:
            raise ValueError(kind)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"wall": wall, "peak_rss_mb": peak_rss_mb(), "import_rss_mb": start_rss}))


def run_child(kind: str, n: int, data: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--size", str(n)]
    cmd += ["--data", data]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_out_of_core(sizes: list[int], data: str, kinds: list[str]) -> dict:
    os.makedirs(data, exist_ok=True)
    free = shutil.disk_usage(data).free / 1e9
    need = (
        sum(2 * 2 * n * n + 4 * n * n for n in sizes[-1:]) / 1e9
        + sum(4 * n * n for n in sizes) / 1e9
    )
    print(f"\n2. Out of core: uint16 zarr inputs ({CHUNK}^2 chunks) in {data}")
    print(f"   free disk {free:.0f} GB, this needs up to ~{need:.1f} GB")
    if free < need * 1.2:
        raise SystemExit("not enough free disk space; use --quick or --data elsewhere")
    results: dict = {}
    for n in sizes:
        t0 = time.perf_counter()
        for seed, k in enumerate("ab"):
            make_input(os.path.join(data, f"{n}_{k}.zarr"), n, seed)
        made = time.perf_counter() - t0
        for kind in kinds:
            r = run_child(kind, n, data)
            results[(kind, n)] = r
            mp = n * n / 1e6
            print(
                f"   {kind:9s} {n:6d}^2 ({mp:6.0f} MP): {r['wall']:7.1f} s  "
                f"{mp / r['wall']:6.1f} MP/s  peak RSS {r['peak_rss_mb']:6.0f} MB "
                f"(after imports {r['import_rss_mb']:.0f} MB)  [inputs made in {made:.0f} s]"
            )
    return results


def report_growth(results: dict, sizes: list[int], kinds: list[str]) -> None:
    print("\n3. Cost growth (seconds per megapixel; linear cost = constant)")
    for kind in kinds:
        per_mp = [results[(kind, n)]["wall"] / (n * n / 1e6) for n in sizes]
        cells = "  ".join(
            f"{n}^2: {p * 1e3:6.2f} ms/MP" for n, p in zip(sizes, per_mp, strict=True)
        )
        rss = [results[(kind, n)]["peak_rss_mb"] for n in sizes]
        print(f"   {kind:9s} {cells}")
        print(
            f"   {'':9s} cost per pixel {sizes[-1]}^2 / {sizes[0]}^2: "
            f"{per_mp[-1] / per_mp[0]:.2f};  peak RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--keep", action="store_true", help="keep the zarr inputs on disk")
    parser.add_argument("--data", default=os.path.join(HERE, "_data"))
    parser.add_argument("--sizes", type=int, nargs="*", help="out-of-core image sizes")
    parser.add_argument("--throughput-size", type=int)
    parser.add_argument("--kinds", nargs="*", default=["plain", "pipeline", "overlap"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.size, args.data)
        return 0
    sizes = args.sizes or ([1024, 2048, 4096] if args.quick else [4096, 10000, 20000, 30000])
    n_throughput = args.throughput_size or (4096 if args.quick else 16384)
    bench_throughput(n_throughput)
    try:
        results = bench_out_of_core(sizes, args.data, args.kinds)
        report_growth(results, sizes, args.kinds)
    finally:
        if not args.keep:
            shutil.rmtree(args.data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
