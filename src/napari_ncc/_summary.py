"""What a front end shows about a map: summary figures, formatted shifts, a preview picture.

Shared by the command line and the napari widget, so both count, round and colour the
same way. :func:`summarize` reduces an NCC map (NumPy, or Dask chunk by chunk) to a few
figures; :func:`format_shift`, :func:`format_radius` and :func:`format_number` write
numbers the way people read them (never ``-0.00``); :func:`colormap_lut` and
:func:`preview_image` draw maps in napari's NCC colours.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np

from ._validation import is_dask, snap_shift

__all__ = [
    "CONFIDENT",
    "colormap_lut",
    "describe",
    "format_number",
    "format_radius",
    "format_shift",
    "preview_image",
    "summarize",
    "to_json",
    "transform_summary",
    "window_spans_stack",
]

#: A pixel is "confident" when its NCC exceeds this (the default threshold).
CONFIDENT = 0.5


def summarize(ncc, fill_value: float, threshold: float = CONFIDENT) -> dict:
    """Summary figures of an NCC map (NumPy, or Dask reduced chunk by chunk).

    Parameters
    ----------
    ncc : ndarray or dask.array.Array
        An NCC map, as :func:`napari_ncc.ncc_confidence` returns it.
    fill_value : float
        The value the map holds where the NCC is undefined (NaN works).
    threshold : float, optional
        A pixel is counted as confident when its NCC exceeds this.

    Returns
    -------
    summary : dict
        ``mean`` (mean NCC over the defined pixels, None when there are none),
        ``confident`` (fraction of all pixels whose NCC exceeds `threshold`),
        ``threshold``, ``undefined`` (fraction holding `fill_value`: flat windows, or
        windows reaching data the registration shifted in from outside), ``min`` and
        ``max`` (over the defined pixels, None when there are none).

    Examples
    --------
    >>> import numpy as np
    >>> s = summarize(np.array([[1.0, 0.2], [0.0, 0.9]], np.float32), fill_value=0.0)
    >>> round(s["mean"], 3), s["confident"], s["undefined"]
    (0.7, 0.5, 0.25)
    """
    if is_dask(ncc):
        import dask.array as xp
    else:
        xp = np
        ncc = np.asarray(ncc)
    if math.isnan(fill_value):
        undefined = xp.isnan(ncc)
    else:
        undefined = ncc == np.float32(fill_value)
    defined = ~undefined
    parts = (
        xp.where(defined, ncc, 0).astype(np.float64).sum(),
        defined.sum(),
        (ncc > threshold).sum(),
        xp.where(defined, ncc, np.inf).min(),
        xp.where(defined, ncc, -np.inf).max(),
    )
    if xp is not np:
        parts = xp.compute(*parts)
    total, n_defined, n_confident, lo, hi = (float(p) for p in parts)
    size = float(math.prod(ncc.shape))
    return {
        "mean": total / n_defined if n_defined else None,
        "confident": n_confident / size,
        "threshold": threshold,
        "undefined": 1.0 - n_defined / size,
        "min": lo if n_defined else None,
        "max": hi if n_defined else None,
    }


def format_number(value: float | None, digits: int = 3, *, signed: bool = False) -> str:
    """`value` with `digits` decimals, never a negative zero; "undefined" for None.

    Examples
    --------
    >>> format_number(-0.0004), format_number(-0.004, 2, signed=True), format_number(None)
    ('0.000', '+0.00', 'undefined')
    """
    if value is None:
        return "undefined"
    # Round first, then add 0.0: a value that rounds to zero prints without its sign.
    value = round(float(value), digits) + 0.0
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_shift(shift, axis_names: Sequence[str] | None = None) -> str:
    """A shift as ``"y -3.30, x +6.10 px"``: one signed value per axis, never ``-0.00``.

    Parameters
    ----------
    shift : sequence of float
        One value per axis, in pixels.
    axis_names : sequence of str, optional
        The axes' names (``("t", "y", "x")``); z, y, x (or ``axis i``) when missing or
        uninformative (tifffile's single-letter codes other than t, c, z, y, x).

    Examples
    --------
    >>> format_shift([-6e-18, 3.3]), format_shift([0.5, 1, 2, -1], "tzyx")
    ('y +0.00, x +3.30 px', 't +0.50, z +1.00, y +2.00, x -1.00 px')
    """
    shift = snap_shift(np.ravel(shift)).tolist()
    names = [str(n).lower() for n in axis_names] if axis_names else []
    if len(names) != len(shift) or any(len(n) == 1 and n not in "tczyx" for n in names):
        names = list("zyx"[-len(shift) :]) if len(shift) <= 3 else []
    if not names:
        names = [f"axis {i}" for i in range(len(shift))]
    values = (format_number(s, 2, signed=True) for s in shift)
    return ", ".join(f"{n} {v}" for n, v in zip(names, values, strict=True)) + " px"


def format_radius(radius: int | Sequence[int]) -> str:
    """A radius as it is typed on the command line: ``3``, or ``3,3,1`` per axis.

    Examples
    --------
    >>> format_radius(3), format_radius([2, 2])
    ('3', '2,2')
    """
    if np.ndim(radius) == 0:
        return str(int(radius))
    return ",".join(str(int(r)) for r in radius)


def describe(result: dict) -> list[str]:
    """The lines a person reads about a run: the shift(s) found and the map's summary.

    Parameters
    ----------
    result : dict
        ``registration`` (:meth:`Registration.to_dict`, or None when not registered),
        ``summary`` (:func:`summarize`), ``shape``, ``radius`` and ``window`` of the map;
        optionally ``axes_names``, ``sample_info`` (a sample pair's name, description and
        known shift) and ``written`` (name to path of the files written).

    Returns
    -------
    lines : list of str

    Examples
    --------
    >>> summary = summarize(np.array([[1.0, 0.2], [0.0, 0.9]], np.float32), fill_value=0.0)
    >>> registration = {"shift": [-1e-17, 2.5], "quality": 0.99, "reliable": True}
    >>> for line in describe({"registration": registration, "summary": summary,
    ...                       "shape": [2, 2], "radius": [1, 1], "window": "box"}):
    ...     print(line)
    shift: y +0.00, x +2.50 px  (registration quality 0.990)
    NCC map 2 x 2, radius 1,1 (box window): mean 0.700, confident (NCC > 0.5) 50.0%, undefined (flat, or outside the overlap) 25.0%
    """  # noqa: E501
    lines = []
    sample = result.get("sample_info")
    if sample:
        lines.append(f"sample {sample['name']!r}: {sample['description']}")
        if sample.get("shift") is not None:
            lines.append(f"known shift: {format_shift(sample['shift'])}")
    reg = result.get("registration")
    names = result.get("axes_names")
    if reg is None:
        lines.append("registration: skipped (the images are compared as they are)")
    elif reg.get("transforms") is not None:
        lines.extend(describe_plane_transforms(reg, names))
    elif reg.get("shifts") is not None:
        shifts = np.asarray(reg["shifts"], dtype=float)
        qualities = reg.get("qualities") or [None] * len(shifts)
        onto = reg.get("reference_plane")
        onto = "one shift each" if onto is None else f"each onto plane {onto} of REFERENCE"
        lines.append(f"registration: {len(shifts)} planes along axis {reg['per_plane']}, {onto}")
        plane_axis = reg["per_plane"]
        in_plane = [ax for ax in range(shifts.shape[1]) if ax != plane_axis]
        plane_names = None
        if names and len(names) == shifts.shape[1]:
            plane_names = [names[ax] for ax in in_plane]
        for t, (s, q) in enumerate(zip(shifts[:10], qualities, strict=False)):
            quality = "" if q is None else f"  (quality {format_number(q)})"
            lines.append(f"  plane {t}: shift {format_shift(s[in_plane], plane_names)}{quality}")
        if len(shifts) > 10:
            lines.append(f"  ... {len(shifts) - 10} more planes (all stored with the map)")
    else:
        quality = reg.get("quality")
        quality = "" if quality is None else f"  (registration quality {format_number(quality)})"
        if reg.get("transform") is None:
            lines.append(f"shift: {format_shift(reg['shift'], names)}{quality}")
        else:
            lines.extend(describe_transform(reg, quality))
    if reg is not None and not reg.get("reliable", True):
        notes = "; ".join(reg.get("notes") or []) or "check that the images overlap"
        lines.append(f"  the registration is UNRELIABLE: {notes}")
    s = result["summary"]
    shape = " x ".join(str(n) for n in result["shape"])
    lines.append(
        f"NCC map {shape}, radius {format_radius(result['radius'])} ({result['window']} "
        f"window): mean {format_number(s['mean'])}, confident (NCC > {s['threshold']:g}) "
        f"{s['confident']:.1%}, undefined (flat, or outside the overlap) {s['undefined']:.1%}"
    )
    for name, path in result.get("written", {}).items():
        lines.append(f"{name}: {path}")
    return lines


def transform_summary(registration: dict) -> dict | None:
    """The figures people read about a transform, from :meth:`Registration.to_dict`.

    Returns
    -------
    dict or None
        None for a translation. Otherwise ``model``; ``angle`` (degrees, 2D and 3D,
        else None) and ``rotation_axis`` (3D: the (z, y, x) unit vector the angle turns
        about, else None), ``scale`` (mean isotropic scale) and ``shift`` (at the image
        centre, px); for a deformable transform ``field`` with the ``largest`` and
        ``median`` length of its node displacements beyond the linear part (px) and
        ``nodes``; ``tiles`` with their ``count`` and how many were ``rejected`` as
        outliers (None when unknown). Per plane (``transforms``): ``model``,
        ``per_plane``, ``tiles`` (over the planes) and ``planes``, those figures for each
        plane (its shift within the plane).

    Examples
    --------
    >>> from napari_ncc._transform import AffineTransform
    >>> t = AffineTransform.from_rotation(5.0, scale=1.02, center=(64, 64))
    >>> s = transform_summary({"shift": [0.0, 1.5], "transform": t.to_dict(), "tiles": None})
    >>> s["model"], round(s["angle"], 6), round(s["scale"], 6), s["shift"], s["field"]
    ('similarity', 5.0, 1.02, [0.0, 1.5], None)
    """
    from ._transform import transform_from_dict

    if registration.get("transforms") is not None:
        axis = registration["per_plane"]
        planes = [
            transform_summary(
                {"shift": np.delete(shift, axis).tolist(), "transform": transform, "tiles": None}
            )
            for shift, transform in zip(
                registration["shifts"], registration["transforms"], strict=True
            )
        ]
        return {
            "model": planes[0]["model"],
            "per_plane": axis,
            "planes": planes,
            "tiles": registration.get("tiles"),
        }
    if registration.get("transform") is None:
        return None
    transform = transform_from_dict(registration["transform"])
    affine = transform.affine
    field = None
    if transform.model == "deformable":
        lengths = np.linalg.norm(
            np.asarray(transform.displacement).reshape(affine.ndim, -1), axis=0
        )
        field = {
            "largest": float(lengths.max()),
            "median": float(np.median(lengths)),
            "nodes": int(lengths.size),
        }
    return {
        "model": transform.model,
        "angle": affine.angle if affine.ndim in (2, 3) else None,
        "rotation_axis": ([float(v) for v in affine.rotation_axis] if affine.ndim == 3 else None),
        "scale": affine.scale,
        "shift": [float(s) for s in registration["shift"]],
        "field": field,
        "tiles": registration.get("tiles"),
    }


def describe_transform(registration: dict, quality: str = "") -> list[str]:
    """Lines describing a non-translation registration (:meth:`Registration.to_dict`).

    The figures of :func:`transform_summary`: the model, rotation angle (3D: about an
    axis), scale and shift at the image centre (then `quality`, a note); for a deformable
    transform also its field's largest and median node displacement; and the tiles the fit
    rejected, when known.

    Examples
    --------
    >>> from napari_ncc._transform import AffineTransform
    >>> t = AffineTransform.from_rotation(5.0, scale=1.02, center=(64, 64))
    >>> reg = {"shift": [0.0, 0.0], "transform": t.to_dict(),
    ...        "tiles": {"count": 16, "rejected": 1}}
    >>> for line in describe_transform(reg):
    ...     print(line)
    transform: similarity, angle +5.00 deg, scale 1.0200, shift at the centre y +0.00, x +0.00 px
      tiles: 16, 1 rejected as outliers
    """
    summary = transform_summary(registration)
    parts = [f"transform: {summary['model']}"]
    if summary["angle"] is not None:
        angle = f"angle {format_number(summary['angle'], 2, signed=True)} deg"
        if summary["rotation_axis"] is not None:
            axis = ", ".join(format_number(v, 2, signed=True) for v in summary["rotation_axis"])
            angle = f"angle {format_number(summary['angle'], 2)} deg about (z, y, x) ({axis})"
        parts.append(angle)
    parts.append(f"scale {format_number(summary['scale'], 4)}")
    parts.append(f"shift at the centre {format_shift(summary['shift'])}")
    lines = [", ".join(parts) + quality]
    field = summary["field"]
    if field is not None:
        lines.append(
            f"  field: largest displacement {field['largest']:.2f} px, median "
            f"{field['median']:.2f} px ({field['nodes']} nodes)"
        )
    tiles = summary["tiles"]
    if tiles:
        lines.append(f"  tiles: {tiles['count']}, {tiles['rejected']} rejected as outliers")
    return lines


def describe_plane_transforms(
    registration: dict, axis_names: Sequence[str] | None = None, max_planes: int = 10
) -> list[str]:
    """Lines describing a per-plane registration with transforms (``to_dict()`` output).

    The model and the planes, the range of the angle and scale over the planes, then one
    line per plane (the first `max_planes`): the figures of :func:`transform_summary`.

    Examples
    --------
    >>> from napari_ncc._transform import AffineTransform
    >>> ts = [AffineTransform.from_rotation(a, center=(32, 32)) for a in (0.0, 1.5)]
    >>> reg = {"per_plane": 0, "shifts": [[0, 0, 0], [0, 0.5, -1]],
    ...        "transforms": [t.to_dict() for t in ts], "qualities": [0.99, 0.97]}
    >>> for line in describe_plane_transforms(reg):
    ...     print(line)
    registration: 2 rigid transforms, one per plane along axis 0, plane t onto plane t
      over the planes: angle +0.00 to +1.50 deg, scale 1.0000 to 1.0000
      plane 0: angle +0.00 deg, scale 1.0000, shift at the centre y +0.00, x +0.00 px  (quality 0.990)
      plane 1: angle +1.50 deg, scale 1.0000, shift at the centre y +0.50, x -1.00 px  (quality 0.970)
    """  # noqa: E501
    planes = transform_summary(registration)["planes"]
    axis = registration["per_plane"]
    names = None
    if axis_names and len(axis_names) == len(registration["shifts"][0]):
        names = [n for ax, n in enumerate(axis_names) if ax != axis]
    qualities = registration.get("qualities") or [None] * len(planes)
    onto = registration.get("reference_plane")
    onto = "plane t onto plane t" if onto is None else f"each onto plane {onto} of REFERENCE"
    model = planes[0]["model"]
    lines = [
        f"registration: {len(planes)} {model} transforms, one per plane along axis {axis}, {onto}"
    ]
    ranges = []
    angles = [p["angle"] for p in planes if p["angle"] is not None]
    if angles:
        ranges.append(
            f"angle {format_number(min(angles), 2, signed=True)} to "
            f"{format_number(max(angles), 2, signed=True)} deg"
        )
    scales = [p["scale"] for p in planes]
    ranges.append(f"scale {format_number(min(scales), 4)} to {format_number(max(scales), 4)}")
    lines.append("  over the planes: " + ", ".join(ranges))
    if model == "deformable":
        largest = [p["field"]["largest"] for p in planes]
        worst = int(np.argmax(largest))
        lines.append(
            f"  field: largest displacement {largest[worst]:.2f} px (plane {worst}), "
            f"median over the planes {np.median(largest):.2f} px"
        )
    for t, (plane, quality) in enumerate(zip(planes, qualities, strict=False)):
        if t == max_planes:
            lines.append(f"  ... {len(planes) - t} more planes (all stored with the map)")
            break
        parts = (
            []
            if plane["angle"] is None
            else [f"angle {format_number(plane['angle'], 2, signed=True)} deg"]
        )
        parts.append(f"scale {format_number(plane['scale'], 4)}")
        parts.append(f"shift at the centre {format_shift(plane['shift'], names)}")
        quality = "" if quality is None else f"  (quality {format_number(quality)})"
        lines.append(f"  plane {t}: " + ", ".join(parts) + quality)
    tiles = registration.get("tiles")
    if tiles:
        lines.append(
            f"  tiles: {tiles['count']} over {len(planes)} planes, {tiles['rejected']} "
            "rejected as outliers"
        )
    return lines


def _axis_names(ndim: int) -> list[str]:
    return list("zyx"[-ndim:]) if ndim <= 3 else [f"axis {i}" for i in range(ndim)]


def describe_registration(registration, same_layer: bool = False) -> str:
    """What napari's result area says about a registration (plain text, a few lines).

    `same_layer`: the reference and moving images were one layer (the map is 1).
    """
    lines = []
    if same_layer:
        lines.append("reference and moving are the same layer: the map is 1 everywhere")
    if registration is None:
        lines.append("not registered: the images are compared as they are")
        return "\n".join(lines)
    names = _axis_names(len(registration.shift))
    axes = [ax for ax in range(len(names)) if ax != registration.per_plane]
    shift = ", ".join(
        f"{names[ax]} {format_number(registration.shift[ax], 2, signed=True)}" for ax in axes
    )
    if registration.transforms is not None:
        lines.extend(describe_plane_transforms(registration.to_dict()))
        lines.append(f"registration quality: {registration.quality:.2f} (lowest plane)")
    elif registration.transform is not None:
        lines.extend(describe_transform(registration.to_dict()))
        lines.append(f"registration quality: {registration.quality:.2f}")
    elif registration.shifts is None:
        lines.append(f"shift: {shift} px")
        lines.append(f"registration quality: {registration.quality:.2f}")
    else:
        n = len(registration.shifts)
        lines.append(f"shift (median of {n} planes along axis {registration.per_plane}):")
        lines.append(f"  {shift} px")
        lines.append(f"registration quality: {registration.quality:.2f} (lowest plane)")
    if not registration.reliable:
        notes = "; ".join(registration.notes) or "no clear match between the images"
        lines.append(f"WARNING: the registration is unreliable ({notes})")
    return "\n".join(lines)


def window_spans_stack(
    shape: Sequence[int], radius: int | Sequence[int], per_plane: int | None = None
) -> tuple[int, int] | None:
    """The first leading axis a window spans most of, as ``(axis, window length)``.

    A time series or a short z-stack compared as a volume gets windows that mix planes
    (and a registration along the planes): usually a forgotten ``per_plane``. Looks at
    the axes before the last two of images of 3 or more dimensions, when `per_plane` is
    None, for a window longer than half the axis.

    Examples
    --------
    >>> window_spans_stack((5, 128, 128), 3), window_spans_stack((64, 128, 128), 3)
    ((0, 7), None)
    """
    ndim = len(shape)
    radii = [radius] * ndim if np.ndim(radius) == 0 else list(radius)
    if per_plane is not None or ndim < 3 or len(radii) != ndim:
        return None
    for ax in range(ndim - 2):
        window = 2 * int(radii[ax]) + 1
        if window > shape[ax] / 2:
            return ax, window
    return None


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(result: dict, indent: int | None = None) -> str:
    """`result` (such as :func:`describe` reads) as JSON: NumPy values and paths as plain
    numbers, lists and strings."""
    return json.dumps(result, indent=indent, default=_jsonable)


def colormap_lut(n: int = 256) -> np.ndarray:
    """An ``(n, 3)`` uint8 colour table for NCC values from -1 (row 0) to 1 (row n-1).

    The colormap napari shows NCC layers with (``_multiscale.NCC_COLORMAP``: ColorBrewer's
    colour-blind-safe PiYG, magenta at -1, white at 0, green at +1), its colours evenly
    spaced and linearly interpolated.

    Examples
    --------
    >>> lut = colormap_lut(11)
    >>> lut.shape, lut[0].tolist(), lut[5].tolist()  # magenta at -1, white at 0
    ((11, 3), [142, 1, 82], [247, 247, 247])
    """
    from ._multiscale import NCC_COLORMAP

    anchors = np.array(
        [[int(c[k : k + 2], 16) for k in (1, 3, 5)] for c in NCC_COLORMAP["colors"]],
        dtype=np.float64,
    )
    positions = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, positions, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


def _to_gray8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.asarray(image, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    gray = np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def preview_image(reference, moving, ncc) -> np.ndarray:
    """RGB uint8 picture: reference | moving | NCC map (with a colour bar), titled.

    The two images share one grey scale (their joint 1st-99.5th percentiles), so a change
    of intensity shows; the NCC map uses :func:`colormap_lut` from -1 to 1, undefined
    (NaN) pixels in grey.

    Parameters
    ----------
    reference, moving, ncc : array_like
        2D images of one shape (Dask arrays are computed: meant for small images).

    Returns
    -------
    picture : ndarray of uint8, shape (height, width, 3)

    Examples
    --------
    >>> import numpy as np
    >>> a = np.random.default_rng(0).random((40, 50))
    >>> preview_image(a, a, np.ones_like(a)).shape[2]
    3
    """
    from PIL import Image, ImageDraw, ImageFont

    reference, moving, ncc = (np.asarray(x) for x in (reference, moving, ncc))
    if reference.ndim != 2:
        raise ValueError(f"the preview needs 2D images, got shape {reference.shape}")
    lo, hi = np.percentile(np.concatenate([reference.ravel(), moving.ravel()]), [1, 99.5])
    lut = colormap_lut()
    index = np.round((np.nan_to_num(ncc, nan=-1.0).clip(-1, 1) + 1) * 127.5).astype(int)
    ncc_rgb = lut[index]
    ncc_rgb[np.isnan(ncc)] = 128
    panels = [_to_gray8(reference, lo, hi), _to_gray8(moving, lo, hi), ncc_rgb]
    titles = ["reference", "moving", "local NCC (-1 to 1)"]

    h, w = reference.shape
    gap, top, bar = 12, 34, 40
    canvas = np.full((top + h + bar, 3 * w + 4 * gap, 3), 255, dtype=np.uint8)
    for k, panel in enumerate(panels):
        x0 = gap + k * (w + gap)
        canvas[top : top + h, x0 : x0 + w] = panel
    # Colour bar under the NCC panel.
    x0 = gap + 2 * (w + gap)
    ramp = lut[np.linspace(0, 255, w).round().astype(int)]
    canvas[top + h + 6 : top + h + 20, x0 : x0 + w] = ramp[None]

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1 has one bitmap size only.
        font = ImageFont.load_default()
    for k, title in enumerate(titles):
        draw.text((gap + k * (w + gap), 8), title, fill=(0, 0, 0), font=font)
    for value, frac, anchor in ((-1, 0.0, "la"), (0, 0.5, "ma"), (1, 1.0, "ra")):
        draw.text(
            (x0 + frac * (w - 1), top + h + 21),
            str(value),
            fill=(0, 0, 0),
            font=font,
            anchor=anchor,
        )
    return np.asarray(picture)
