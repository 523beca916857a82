"""Compiled kernels of the local NCC: one fused pass per 2D plane, no padded copies.

The window sums of the five moments (a, b, a*a, b*b, a*b) are kept as running sums: a ring
buffer of the ``2*ry + 1`` centred rows under the window feeds column accumulators (one add
and one subtract per row, vectorised along x), and a running sum along x turns those into
window sums. The cost per pixel is therefore independent of the radius. The Gaussian kernel
uses the same structure with explicit separable weights (its cost does grow with the radius).

Everything is accumulated in float64 after subtracting a per-block centre. For integer data
of up to 16 bits the sums are exact integers, so a flat window has a variance of exactly 0.

All kernels are serial and release the GIL (``nogil=True``); callers parallelise over row
strips or Dask chunks with threads. Compiled code is cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}


@njit(**_JIT)
def _gather_row(src, j, xmap, centre, out):
    """Centred values of source row ``j`` read through ``xmap`` (``-1``: constant 0)."""
    if j < 0:
        for x in range(xmap.shape[0]):
            out[x] = -centre
        return
    row = src[j]
    for x in range(xmap.shape[0]):
        i = xmap[x]
        if i >= 0:
            out[x] = row[i] - centre
        else:
            out[x] = -centre


@njit(**_JIT)
def _finalize_row(s0, s1, s2, s3, s4, n, floor_a, floor_b, fill, out_row):
    """Pearson correlation from window sums (total weight ``n``); ``fill`` where flat.

    Works with ``n**2`` times the (co)variances, ``n * sum(a*a) - sum(a)**2``: for integer
    data both terms are exact integers before rounding, so a flat window gives exactly 0.
    """
    floor_a = floor_a * n * n
    floor_b = floor_b * n * n
    for x in range(out_row.shape[0]):
        va = n * s2[x] - s0[x] * s0[x]
        vb = n * s3[x] - s1[x] * s1[x]
        cov = n * s4[x] - s0[x] * s1[x]
        den = np.sqrt(max(va * vb, 1e-300))
        r = cov / den
        r = min(max(r, -1.0), 1.0)
        flat = (va <= floor_a) | (vb <= floor_b)
        out_row[x] = fill if flat else r


@njit(**_JIT)
def ncc2d_box(a, b, ymap, xmap, ry, rx, ca, cb, floor_a, floor_b, fill, out):
    """Box-window NCC of a 2D plane.

    Parameters
    ----------
    a, b : 2D arrays
        Source planes (any real dtype, any strides).
    ymap, xmap : 1D int64 arrays
        Index maps (see ``_borders.border_index_map``) of length ``H + 2*ry`` and ``W + 2*rx``.
    ry, rx : int
        Window radii.
    ca, cb : float
        Centres subtracted from ``a`` and ``b`` before accumulating.
    floor_a, floor_b : float
        A window whose variance is ``<=`` its floor is flat.
    fill : float
        Value written where either window is flat.
    out : 2D float32 array of shape ``(H, W)``
        Written in place.
    """
    height, width = out.shape
    ny = 2 * ry + 1
    nx = 2 * rx + 1
    wp = width + 2 * rx
    ring_a = np.empty((ny, wp))
    ring_b = np.empty((ny, wp))
    new_a = np.empty(wp)
    new_b = np.empty(wp)
    c0 = np.zeros(wp)
    c1 = np.zeros(wp)
    c2 = np.zeros(wp)
    c3 = np.zeros(wp)
    c4 = np.zeros(wp)
    s0 = np.empty(width)
    s1 = np.empty(width)
    s2 = np.empty(width)
    s3 = np.empty(width)
    s4 = np.empty(width)
    n = float(ny * nx)

    for k in range(ny):
        ra = ring_a[k]
        rb = ring_b[k]
        _gather_row(a, ymap[k], xmap, ca, ra)
        _gather_row(b, ymap[k], xmap, cb, rb)
        for x in range(wp):
            va = ra[x]
            vb = rb[x]
            c0[x] += va
            c1[x] += vb
            c2[x] += va * va
            c3[x] += vb * vb
            c4[x] += va * vb

    for y in range(height):
        if y > 0:
            # The row leaving the window (padded y - 1) and the one entering (y + 2*ry)
            # share a ring slot.
            slot = (y - 1) % ny
            oa = ring_a[slot]
            ob = ring_b[slot]
            _gather_row(a, ymap[y + 2 * ry], xmap, ca, new_a)
            _gather_row(b, ymap[y + 2 * ry], xmap, cb, new_b)
            for x in range(wp):
                na = new_a[x]
                nb = new_b[x]
                pa = oa[x]
                pb = ob[x]
                c0[x] += na - pa
                c1[x] += nb - pb
                c2[x] += na * na - pa * pa
                c3[x] += nb * nb - pb * pb
                c4[x] += na * nb - pa * pb
                oa[x] = na
                ob[x] = nb

        t0 = 0.0
        t1 = 0.0
        t2 = 0.0
        t3 = 0.0
        t4 = 0.0
        for x in range(nx):
            t0 += c0[x]
            t1 += c1[x]
            t2 += c2[x]
            t3 += c3[x]
            t4 += c4[x]
        s0[0] = t0
        s1[0] = t1
        s2[0] = t2
        s3[0] = t3
        s4[0] = t4
        for x in range(1, width):
            t0 += c0[x + nx - 1] - c0[x - 1]
            t1 += c1[x + nx - 1] - c1[x - 1]
            t2 += c2[x + nx - 1] - c2[x - 1]
            t3 += c3[x + nx - 1] - c3[x - 1]
            t4 += c4[x + nx - 1] - c4[x - 1]
            s0[x] = t0
            s1[x] = t1
            s2[x] = t2
            s3[x] = t3
            s4[x] = t4
        _finalize_row(s0, s1, s2, s3, s4, n, floor_a, floor_b, fill, out[y])


@njit(**_JIT)
def ncc2d_weighted(a, b, ymap, xmap, wy, wx, ca, cb, floor_a, floor_b, fill, out):
    """Separable weighted-window NCC of a 2D plane (weights ``wy``, ``wx`` each sum to 1).

    Same arguments as :func:`ncc2d_box`, with the radii given by ``len(wy) // 2`` and
    ``len(wx) // 2``.
    """
    height, width = out.shape
    ny = wy.shape[0]
    nx = wx.shape[0]
    wp = width + nx - 1
    ring_a = np.empty((ny, wp))
    ring_b = np.empty((ny, wp))
    c = np.empty((5, wp))
    s = np.empty((5, width))

    for k in range(ny - 1):
        _gather_row(a, ymap[k], xmap, ca, ring_a[k])
        _gather_row(b, ymap[k], xmap, cb, ring_b[k])

    for y in range(height):
        k = y + ny - 1
        _gather_row(a, ymap[k], xmap, ca, ring_a[k % ny])
        _gather_row(b, ymap[k], xmap, cb, ring_b[k % ny])
        c[:] = 0.0
        for j in range(ny):
            w = wy[j]
            ra = ring_a[(y + j) % ny]
            rb = ring_b[(y + j) % ny]
            for x in range(wp):
                va = ra[x]
                vb = rb[x]
                c[0, x] += w * va
                c[1, x] += w * vb
                c[2, x] += w * va * va
                c[3, x] += w * vb * vb
                c[4, x] += w * va * vb
        s[:] = 0.0
        for i in range(nx):
            w = wx[i]
            for m in range(5):
                for x in range(width):
                    s[m, x] += w * c[m, x + i]
        _finalize_row(s[0], s[1], s[2], s[3], s[4], 1.0, floor_a, floor_b, fill, out[y])


@njit(**_JIT)
def value_range(a):
    """Minimum, maximum and sum of a 2D array (any strides) in float64, in one pass.

    The sum is only there to detect NaN and infinity cheaply: it is finite iff they are absent
    (short of float64 overflow).
    """
    lo = np.inf
    hi = -np.inf
    total = 0.0
    for i in range(a.shape[0]):
        row = a[i]
        for j in range(row.shape[0]):
            v = np.float64(row[j])
            lo = min(lo, v)
            hi = max(hi, v)
            total += v
    return lo, hi, total


@njit(**_JIT)
def _add_plane_moments(a, b, j, ymap, xmap, ca, cb, sign, moments, row_a, row_b):
    """``moments += sign * (a, b, a*a, b*b, a*b)`` of source plane ``j`` (padded rows)."""
    for y in range(ymap.shape[0]):
        jy = ymap[y] if j >= 0 else -1
        pa = a[max(j, 0)]
        pb = b[max(j, 0)]
        _gather_row(pa, jy, xmap, ca, row_a)
        _gather_row(pb, jy, xmap, cb, row_b)
        m0 = moments[0, y]
        m1 = moments[1, y]
        m2 = moments[2, y]
        m3 = moments[3, y]
        m4 = moments[4, y]
        for x in range(row_a.shape[0]):
            va = row_a[x]
            vb = row_b[x]
            m0[x] += sign * va
            m1[x] += sign * vb
            m2[x] += sign * (va * va)
            m3[x] += sign * (vb * vb)
            m4[x] += sign * (va * vb)


@njit(**_JIT)
def _window_sums_of_row(moments, c, s, y, ry, nx):
    """Box sums ``s[m]`` of output row ``y`` of the padded plane sums ``moments[m]``.

    ``c`` holds the column sums over padded rows ``y .. y + 2*ry``: built at ``y == 0``,
    then moved down one row per call.
    """
    n_moments, _, wp = moments.shape
    width = s.shape[1]
    if y == 0:
        c[:] = 0.0
        for k in range(2 * ry + 1):
            for m in range(n_moments):
                mk = moments[m, k]
                cm = c[m]
                for x in range(wp):
                    cm[x] += mk[x]
    else:
        for m in range(n_moments):
            new = moments[m, y + 2 * ry]
            old = moments[m, y - 1]
            cm = c[m]
            for x in range(wp):
                cm[x] += new[x] - old[x]
    for m in range(n_moments):
        cm = c[m]
        sm = s[m]
        t = 0.0
        for x in range(nx):
            t += cm[x]
        sm[0] = t
        for x in range(1, width):
            t += cm[x + nx - 1] - cm[x - 1]
            sm[x] = t


@njit(**_JIT)
def ncc3d_box(a, b, zmap, ymap, xmap, rz, ry, rx, ca, cb, floor_a, floor_b, fill, out):
    """Box-window NCC of a 3D volume: running sums over planes, then rows, then columns.

    Same arguments as :func:`ncc2d_box` with one more axis (``zmap``, ``rz``).
    """
    depth, height, width = out.shape
    nz = 2 * rz + 1
    ny = 2 * ry + 1
    nx = 2 * rx + 1
    hp = height + 2 * ry
    wp = width + 2 * rx
    moments = np.zeros((5, hp, wp))
    row_a = np.empty(wp)
    row_b = np.empty(wp)
    c = np.empty((5, wp))
    s = np.empty((5, width))
    n = float(nz * ny * nx)
    for k in range(nz):
        _add_plane_moments(a, b, zmap[k], ymap, xmap, ca, cb, 1.0, moments, row_a, row_b)
    for z in range(depth):
        if z > 0:
            _add_plane_moments(
                a, b, zmap[z + 2 * rz], ymap, xmap, ca, cb, 1.0, moments, row_a, row_b
            )
            _add_plane_moments(a, b, zmap[z - 1], ymap, xmap, ca, cb, -1.0, moments, row_a, row_b)
        for y in range(height):
            _window_sums_of_row(moments, c, s, y, ry, nx)
            _finalize_row(s[0], s[1], s[2], s[3], s[4], n, floor_a, floor_b, fill, out[z, y])


# ---------------------------------------------------------------------------------------
# Masked kernels: a sixth running sum counts the window's pixels where the mask is true
# ---------------------------------------------------------------------------------------
#
# A masked-off pixel reads the value 0 (after centring) and the weight 0, so it adds exactly
# nothing to any sum; the selects below never multiply by the weight, so NaN or garbage under
# the mask cannot leak in. The constant border is data of value 0 with weight 1, as in the
# unmasked kernels, so an all-true mask gives the unmasked map in every mode.


@njit(**_JIT)
def _gather_masked_rows(a, b, mask, j, xmap, ca, cb, out_a, out_b, out_w):
    """Centred values of row ``j`` of `a` and `b` and its weights (1 where `mask`, else 0).

    `out_w` may be of any real dtype (the box kernel keeps its ring of weights in uint8).
    """
    if j < 0:
        for x in range(xmap.shape[0]):
            out_a[x] = -ca
            out_b[x] = -cb
            out_w[x] = 1
        return
    row_a = a[j]
    row_b = b[j]
    row_m = mask[j]
    for x in range(xmap.shape[0]):
        i = xmap[x]
        if i >= 0:
            keep = row_m[i] != 0
            va = row_a[i] - ca
            vb = row_b[i] - cb
            out_a[x] = va if keep else 0.0
            out_b[x] = vb if keep else 0.0
            out_w[x] = 1 if keep else 0
        else:
            out_a[x] = -ca
            out_b[x] = -cb
            out_w[x] = 1


@njit(**_JIT)
def _finalize_row_masked(sw, s0, s1, s2, s3, s4, min_weight, floor_a, floor_b, fill, out_row):
    """Pearson correlation from window sums over the true pixels (total weight ``sw``).

    ``fill`` where the weight is below ``min_weight`` or either window is flat; the floors
    scale with ``sw**2`` as the ``sw**2``-times (co)variances do.
    """
    for x in range(out_row.shape[0]):
        n = sw[x]
        va = n * s2[x] - s0[x] * s0[x]
        vb = n * s3[x] - s1[x] * s1[x]
        cov = n * s4[x] - s0[x] * s1[x]
        den = np.sqrt(max(va * vb, 1e-300))
        r = cov / den
        r = min(max(r, -1.0), 1.0)
        n2 = n * n
        flat = (va <= floor_a * n2) | (vb <= floor_b * n2) | (n < min_weight)
        out_row[x] = fill if flat else r


@njit(**_JIT)
def ncc2d_box_masked(
    a, b, mask, ymap, xmap, ry, rx, ca, cb, floor_a, floor_b, min_count, fill, out
):
    """Box-window NCC of a 2D plane over the pixels where `mask` is non-zero.

    Same arguments as :func:`ncc2d_box`, plus `mask` (2D uint8, read through the same index
    maps as the images) and `min_count`: a window with fewer true pixels is ``fill``.
    The loops are those of :func:`ncc2d_box` with a sixth sum, written out again on purpose:
    the five (six) sums fused in one loop are what makes the kernel fast, and a shared loop
    over a moment axis would slow the unmasked kernel down.
    """
    height, width = out.shape
    ny = 2 * ry + 1
    nx = 2 * rx + 1
    wp = width + 2 * rx
    ring_a = np.empty((ny, wp))
    ring_b = np.empty((ny, wp))
    # uint8 weights: at large radii the rings outgrow the caches, and 8-byte weights
    # would cost 20% of the speed there.
    ring_w = np.empty((ny, wp), dtype=np.uint8)
    new_a = np.empty(wp)
    new_b = np.empty(wp)
    new_w = np.empty(wp, dtype=np.uint8)
    cw = np.zeros(wp)
    c0 = np.zeros(wp)
    c1 = np.zeros(wp)
    c2 = np.zeros(wp)
    c3 = np.zeros(wp)
    c4 = np.zeros(wp)
    sw = np.empty(width)
    s0 = np.empty(width)
    s1 = np.empty(width)
    s2 = np.empty(width)
    s3 = np.empty(width)
    s4 = np.empty(width)

    for k in range(ny):
        ra = ring_a[k]
        rb = ring_b[k]
        rw = ring_w[k]
        _gather_masked_rows(a, b, mask, ymap[k], xmap, ca, cb, ra, rb, rw)
        for x in range(wp):
            va = ra[x]
            vb = rb[x]
            cw[x] += rw[x]
            c0[x] += va
            c1[x] += vb
            c2[x] += va * va
            c3[x] += vb * vb
            c4[x] += va * vb

    for y in range(height):
        if y > 0:
            slot = (y - 1) % ny
            oa = ring_a[slot]
            ob = ring_b[slot]
            ow = ring_w[slot]
            _gather_masked_rows(a, b, mask, ymap[y + 2 * ry], xmap, ca, cb, new_a, new_b, new_w)
            for x in range(wp):
                na = new_a[x]
                nb = new_b[x]
                pa = oa[x]
                pb = ob[x]
                cw[x] += np.float64(new_w[x]) - np.float64(ow[x])
                c0[x] += na - pa
                c1[x] += nb - pb
                c2[x] += na * na - pa * pa
                c3[x] += nb * nb - pb * pb
                c4[x] += na * nb - pa * pb
                oa[x] = na
                ob[x] = nb
                ow[x] = new_w[x]

        tw = 0.0
        t0 = 0.0
        t1 = 0.0
        t2 = 0.0
        t3 = 0.0
        t4 = 0.0
        for x in range(nx):
            tw += cw[x]
            t0 += c0[x]
            t1 += c1[x]
            t2 += c2[x]
            t3 += c3[x]
            t4 += c4[x]
        sw[0] = tw
        s0[0] = t0
        s1[0] = t1
        s2[0] = t2
        s3[0] = t3
        s4[0] = t4
        for x in range(1, width):
            tw += cw[x + nx - 1] - cw[x - 1]
            t0 += c0[x + nx - 1] - c0[x - 1]
            t1 += c1[x + nx - 1] - c1[x - 1]
            t2 += c2[x + nx - 1] - c2[x - 1]
            t3 += c3[x + nx - 1] - c3[x - 1]
            t4 += c4[x + nx - 1] - c4[x - 1]
            sw[x] = tw
            s0[x] = t0
            s1[x] = t1
            s2[x] = t2
            s3[x] = t3
            s4[x] = t4
        _finalize_row_masked(sw, s0, s1, s2, s3, s4, min_count, floor_a, floor_b, fill, out[y])


@njit(**_JIT)
def ncc2d_weighted_masked(
    a, b, mask, ymap, xmap, wy, wx, ca, cb, floor_a, floor_b, min_weight, fill, out
):
    """Separable weighted-window NCC of a 2D plane over the pixels where `mask` is non-zero.

    Same arguments as :func:`ncc2d_weighted`, plus `mask` and `min_weight`: a window whose
    true pixels carry less weight (of a total of 1) is ``fill``.
    """
    height, width = out.shape
    ny = wy.shape[0]
    nx = wx.shape[0]
    wp = width + nx - 1
    ring_a = np.empty((ny, wp))
    ring_b = np.empty((ny, wp))
    ring_w = np.empty((ny, wp))
    c = np.empty((6, wp))
    s = np.empty((6, width))

    for k in range(ny - 1):
        _gather_masked_rows(a, b, mask, ymap[k], xmap, ca, cb, ring_a[k], ring_b[k], ring_w[k])

    for y in range(height):
        k = y + ny - 1
        slot = k % ny
        _gather_masked_rows(
            a, b, mask, ymap[k], xmap, ca, cb, ring_a[slot], ring_b[slot], ring_w[slot]
        )
        c[:] = 0.0
        for j in range(ny):
            w = wy[j]
            ra = ring_a[(y + j) % ny]
            rb = ring_b[(y + j) % ny]
            rw = ring_w[(y + j) % ny]
            for x in range(wp):
                va = ra[x]
                vb = rb[x]
                c[0, x] += w * rw[x]
                c[1, x] += w * va
                c[2, x] += w * vb
                c[3, x] += w * va * va
                c[4, x] += w * vb * vb
                c[5, x] += w * va * vb
        s[:] = 0.0
        for i in range(nx):
            w = wx[i]
            for m in range(6):
                for x in range(width):
                    s[m, x] += w * c[m, x + i]
        _finalize_row_masked(
            s[0], s[1], s[2], s[3], s[4], s[5], min_weight, floor_a, floor_b, fill, out[y]
        )


@njit(**_JIT)
def value_range_masked(a, mask):
    """Like :func:`value_range` over the pixels where `mask` (same shape) is non-zero.

    Also returns how many there are; with none, the minimum is ``inf`` and the maximum
    ``-inf``. Values under a false mask are never read into the result (they may be NaN).
    """
    lo = np.inf
    hi = -np.inf
    total = 0.0
    count = 0
    for i in range(a.shape[0]):
        row = a[i]
        row_m = mask[i]
        for j in range(row.shape[0]):
            # Selects, not a branch: a random mask would mispredict it (2x slower).
            keep = row_m[j] != 0
            v = np.float64(row[j])
            lo = min(lo, v if keep else np.inf)
            hi = max(hi, v if keep else -np.inf)
            total += v if keep else 0.0
            count += 1 if keep else 0
    return lo, hi, total, count


@njit(**_JIT)
def _add_plane_moments_masked(a, b, mask, j, ymap, xmap, ca, cb, sign, moments, rows):
    """``moments += sign * (w, a, b, a*a, b*b, a*b)`` of source plane ``j`` (true pixels)."""
    row_a, row_b, row_w = rows
    for y in range(ymap.shape[0]):
        jy = ymap[y] if j >= 0 else -1
        p = max(j, 0)
        _gather_masked_rows(a[p], b[p], mask[p], jy, xmap, ca, cb, row_a, row_b, row_w)
        mw = moments[0, y]
        m0 = moments[1, y]
        m1 = moments[2, y]
        m2 = moments[3, y]
        m3 = moments[4, y]
        m4 = moments[5, y]
        for x in range(row_a.shape[0]):
            va = row_a[x]
            vb = row_b[x]
            mw[x] += sign * row_w[x]
            m0[x] += sign * va
            m1[x] += sign * vb
            m2[x] += sign * (va * va)
            m3[x] += sign * (vb * vb)
            m4[x] += sign * (va * vb)


@njit(**_JIT)
def ncc3d_box_masked(
    a, b, mask, zmap, ymap, xmap, rz, ry, rx, ca, cb, floor_a, floor_b, min_count, fill, out
):
    """Box-window NCC of a 3D volume over the pixels where `mask` is non-zero.

    Same arguments as :func:`ncc3d_box`, plus `mask` and `min_count` as in
    :func:`ncc2d_box_masked`.
    """
    depth, height, width = out.shape
    nz = 2 * rz + 1
    nx = 2 * rx + 1
    hp = height + 2 * ry
    wp = width + 2 * rx
    moments = np.zeros((6, hp, wp))
    row_a = np.empty(wp)
    row_b = np.empty(wp)
    row_w = np.empty(wp)
    c = np.empty((6, wp))
    s = np.empty((6, width))
    rows = (row_a, row_b, row_w)
    for k in range(nz):
        _add_plane_moments_masked(a, b, mask, zmap[k], ymap, xmap, ca, cb, 1.0, moments, rows)
    for z in range(depth):
        if z > 0:
            j_in = zmap[z + 2 * rz]
            j_out = zmap[z - 1]
            _add_plane_moments_masked(a, b, mask, j_in, ymap, xmap, ca, cb, 1.0, moments, rows)
            _add_plane_moments_masked(a, b, mask, j_out, ymap, xmap, ca, cb, -1.0, moments, rows)
        for y in range(height):
            _window_sums_of_row(moments, c, s, y, ry, nx)
            _finalize_row_masked(
                s[0], s[1], s[2], s[3], s[4], s[5], min_count, floor_a, floor_b, fill, out[z, y]
            )
