"""The report's figures, drawn with matplotlib's Agg backend and returned as PNG bytes.

* :func:`slice_figure`: axial, coronal and sagittal slices through the tumour's centre of mass
  (of the ground truth's whole tumour), FLAIR underneath, with ground truth, teacher and student
  regions and the uncertainty maps (the teacher's spread, the student's distilled map) overlaid;
* :func:`dice_figure`: Dice per region for each model;
* :func:`latency_figure`: seconds per case, on a log axis.

Regions are drawn nested (WT, then TC over it, then ET over that) in colours that stay apart
for common colour-vision deficiencies (Okabe-Ito yellow, vermilion, blue).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

REGION_COLOURS = {"WT": "#F0E442", "TC": "#D55E00", "ET": "#0072B2"}
REGION_NAMES = {"WT": "WT whole tumour", "TC": "TC tumour core", "ET": "ET enhancing tumour"}
MODEL_COLOURS = {"teacher": "#555555", "student": "#009E73", "threshold": "#CC79A7"}
VIEWS = ("axial", "coronal", "sagittal")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def centre_of_mass(mask: np.ndarray) -> tuple[int, int, int]:
    """Rounded centre of mass of a 3D boolean mask; the volume's centre when the mask is empty."""
    points = np.argwhere(mask)
    if len(points) == 0:
        return tuple(int(n // 2) for n in mask.shape)
    return tuple(int(round(v)) for v in points.mean(axis=0))


def view_slice(volume: np.ndarray, view: str, centre: Sequence[int]) -> np.ndarray:
    """The 2D slice of ``volume`` (``(..., X, Y, Z)``) through ``centre``, rows top to bottom for ``imshow``.

    axial: fixed Z, shown X across, Y up; coronal: fixed Y, X across, Z up; sagittal: fixed X, Y across, Z up.
    """
    x, y, z = centre
    if view == "axial":
        plane = volume[..., :, :, z]
    elif view == "coronal":
        plane = volume[..., :, y, :]
    elif view == "sagittal":
        plane = volume[..., x, :, :]
    else:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    return np.flip(np.swapaxes(plane, -1, -2), axis=-2)


def view_aspect(spacing: Sequence[float], view: str) -> float:
    """``imshow`` aspect (row height / column width in mm) for a slice of ``view``."""
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[view]


def regions_rgba(regions: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``(3, H, W)`` boolean WT/TC/ET -> an RGBA image, later regions painted over earlier ones."""
    from matplotlib.colors import to_rgb

    rgba = np.zeros((*regions.shape[1:], 4), np.float32)
    for index, name in enumerate(REGION_COLOURS):
        mask = regions[index].astype(bool)
        rgba[mask, :3] = to_rgb(REGION_COLOURS[name])
        rgba[mask, 3] = alpha
    return rgba


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    plt.close(figure)
    return buffer.getvalue()


def _normalised(image: np.ndarray) -> np.ndarray:
    inside = image[image > 0]
    if inside.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    low, high = np.percentile(inside, [1, 99.5])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def slice_figure(background: np.ndarray, panels: Mapping[str, np.ndarray], maps: Mapping[str, np.ndarray],
                 spacing: Sequence[float], centre: Sequence[int], case_id: str = "") -> bytes:
    """Rows: axial, coronal, sagittal. Columns: FLAIR, one per entry of ``panels`` (``(3, X, Y, Z)``
    regions, e.g. ground truth, teacher, student), then one per uncertainty map in ``maps``
    (title -> ``(X, Y, Z)`` standard deviations), all maps on the first map's colour scale so the
    student's distilled map reads against the teacher's spread it was trained to predict."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    columns = ["FLAIR", *panels, *maps]
    figure, axes = plt.subplots(len(VIEWS), len(columns), figsize=(2.6 * len(columns), 2.6 * len(VIEWS) + 0.8),
                                squeeze=False)  # fmt: skip
    shown = _normalised(background)
    first = next(iter(maps.values()), None)
    top = float(np.percentile(first, 99.9)) if first is not None and first.any() else 1.0
    image = None
    for row, view in enumerate(VIEWS):
        aspect = view_aspect(spacing, view)
        base = view_slice(shown, view, centre)
        for col, title in enumerate(columns):
            axis = axes[row, col]
            axis.imshow(base, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
            if title in panels:
                axis.imshow(regions_rgba(view_slice(panels[title], view, centre)), aspect=aspect,
                            interpolation="nearest")  # fmt: skip
            elif title in maps:
                plane = view_slice(maps[title], view, centre)
                image = axis.imshow(np.ma.masked_less_equal(plane, top * 0.02), cmap="magma", vmin=0,
                                    vmax=max(top, 1e-6), alpha=0.85, aspect=aspect,
                                    interpolation="nearest")  # fmt: skip
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=10)
            if col == 0:
                axis.set_ylabel(view, fontsize=10)
    handles = [Patch(color=REGION_COLOURS[r], label=REGION_NAMES[r]) for r in REGION_COLOURS]
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=10)
    if image is not None:
        bar = figure.colorbar(image, ax=axes[:, -1].tolist(), fraction=0.05, pad=0.02)
        bar.set_label("std of the passes' probabilities", fontsize=8)
    figure.suptitle(f"held-out case {case_id}: slices through the tumour's centre of mass {tuple(centre)}",
                    fontsize=11)  # fmt: skip
    figure.subplots_adjust(top=0.9, bottom=0.09, wspace=0.04, hspace=0.06)
    return _png(figure)


def dice_figure(dice: Mapping[str, Mapping[str, float | None]]) -> bytes:
    """Grouped bars: ``dice[model][region]``."""
    plt = _pyplot()
    regions = ["WT", "TC", "ET"]
    figure, axis = plt.subplots(figsize=(6.4, 3.2))
    width = 0.8 / max(1, len(dice))
    for i, (model, values) in enumerate(dice.items()):
        heights = [values.get(r) or 0.0 for r in regions]
        positions = np.arange(len(regions)) + (i - (len(dice) - 1) / 2) * width
        bars = axis.bar(positions, heights, width, label=model, color=MODEL_COLOURS.get(model))
        axis.bar_label(bars, labels=[f"{h:.2f}" for h in heights], fontsize=8, padding=2)
    axis.set_xticks(range(len(regions)), regions)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("Dice (held-out mean)")
    axis.legend(frameon=False, fontsize=8, ncol=len(dice), loc="upper right")
    axis.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def latency_figure(seconds: Mapping[str, float]) -> bytes:
    """Horizontal bars of seconds per case, log axis."""
    plt = _pyplot()
    names = list(seconds)
    figure, axis = plt.subplots(figsize=(6.4, 0.5 * len(names) + 1.0))
    values = [max(seconds[n], 1e-4) for n in names]
    bars = axis.barh(names, values, color=["#555555" if n.startswith("teacher") else "#009E73" for n in names])
    axis.bar_label(bars, labels=[f"{v:.3g} s" for v in values], fontsize=8, padding=3)
    axis.set_xscale("log")
    axis.set_xlim(min(values) / 2, max(values) * 6)
    axis.invert_yaxis()
    axis.set_xlabel("seconds per case (log scale)")
    axis.spines[["top", "right"]].set_visible(False)
    return _png(figure)
