"""Figures, seaborn-styled and always written to files (never shown).

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot,
so no GUI backend and no global figure state; the Agg canvas renders them) and
saved atomically with :func:`save_figure`. Figure sizes are fixed in inches at
:data:`FIGURE_DPI`, so an image's pixel size follows from its layout.

Shared helpers for every plot: :func:`_figure_style` (the seaborn style as a
context manager), :func:`new_figure`, :func:`draw_keypoints` and
:func:`save_figure`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from wakemodel._io import atomic_path
from wakemodel.errors import InputError, WakeModelError

if TYPE_CHECKING:
    from wakemodel.georef import GeoReference, PlatformApproach
    from wakemodel.infer import Prediction
    from wakemodel.scan import ScanResult

FIGURE_DPI = 100
"""Dots per inch of saved figures (pixels = inches * FIGURE_DPI)."""

PANEL_SIZE_IN = 3.0
"""Side of one image panel in inches."""

_PALETTE = sns.color_palette("colorblind")
VERTEX_COLOR = _PALETTE[3]
"""Colour of the wake vertex (the vessel)."""
FAR_END_COLOR = _PALETTE[2]
"""Colour of the far ends of the wake components."""
PREDICTION_COLOR = _PALETTE[1]
"""Colour of predicted keypoints, where shown beside the annotation."""
PLATFORM_COLOR = _PALETTE[4]
"""Colour of platform directions on map-style plots."""


@contextlib.contextmanager
def _figure_style() -> Iterator[None]:
    """Apply the project's seaborn style (white grid, notebook context) within the block.

    Create figures and axes inside the block: matplotlib reads the style when
    artists are created. Global rcParams are restored afterwards.
    """
    style = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.8)}
    with mpl.rc_context({**style, "figure.dpi": FIGURE_DPI, "savefig.dpi": FIGURE_DPI}):
        yield


def new_figure(
    rows: int, columns: int, *, panel_size_in: tuple[float, float] = (PANEL_SIZE_IN, PANEL_SIZE_IN)
) -> tuple[Figure, np.ndarray]:
    """Create a figure with a ``rows x columns`` grid of axes (call inside :func:`_figure_style`).

    Args:
        rows: Number of panel rows.
        columns: Number of panel columns.
        panel_size_in: (width, height) of one panel in inches.

    Returns:
        The figure, ``columns * panel_width * FIGURE_DPI`` by ``rows * panel_height *
        FIGURE_DPI`` pixels when saved, and its axes as an object array ``[rows, columns]``.
    """
    figure = Figure(
        figsize=(columns * panel_size_in[0], rows * panel_size_in[1]),
        dpi=FIGURE_DPI,
        layout="constrained",
    )
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def draw_keypoints(
    ax: Axes, keypoints_px: np.ndarray, visible: np.ndarray, *, predicted: bool = False
) -> None:
    """Draw a chip's keypoints on an image axes whose data units are pixels.

    The vertex is a ring, the far ends are crosses, joined to the vertex by thin
    lines; invisible slots are skipped.

    Args:
        ax: Axes showing the chip with ``extent=(0, width, height, 0)``.
        keypoints_px: ``[3, 2]`` (x, y) continuous pixel coordinates.
        visible: bool ``[3]`` slot mask.
        predicted: Draw in :data:`PREDICTION_COLOR` with dashed lines (a prediction).
    """
    keypoints_px = np.asarray(keypoints_px, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    vertex_color = PREDICTION_COLOR if predicted else VERTEX_COLOR
    end_color = PREDICTION_COLOR if predicted else FAR_END_COLOR
    ends = keypoints_px[1:][visible[1:]]
    if visible[0]:
        vertex_x, vertex_y = keypoints_px[0]
        for end_x, end_y in ends:
            ax.plot(
                [vertex_x, end_x],
                [vertex_y, end_y],
                color=end_color,
                linewidth=0.6,
                linestyle="--" if predicted else "-",
                alpha=0.5,
            )
        ax.scatter(
            [vertex_x],
            [vertex_y],
            s=60,
            facecolors="none",
            edgecolors=vertex_color,
            linewidths=1.6,
            zorder=3,
        )
    if len(ends):
        ax.scatter(
            ends[:, 0], ends[:, 1], s=50, marker="x", color=end_color, linewidths=1.6, zorder=3
        )


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Save a figure atomically at :data:`FIGURE_DPI`; the format follows the suffix.

    Args:
        figure: The figure.
        path: Output file (``.png``, ``.pdf``, ``.svg``, ``.jpg`` ...); its folder is created.

    Returns:
        ``path``.

    Raises:
        InputError: The suffix is not an image format matplotlib can write.
    """
    path = Path(path)
    formats = figure.canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise InputError(
            f"Cannot write figure {path}: unknown suffix {path.suffix!r}; "
            f"use one of {', '.join('.' + name for name in sorted(formats))}."
        )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=FIGURE_DPI)
    return path


def plot_dataset_grid(
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    count: int = 10,
    columns: int = 5,
) -> Path:
    """Plot the first ``count`` chips of a dataset (by name) with their annotated keypoints.

    Each panel shows the normalised chip (the training preprocessing's stretch),
    the vertex (ring) and the far ends (crosses), titled with the chip name, its
    size in pixels and the annotation's heading in degrees. A chip without a wake
    (empty annotation) has no markers, "no wake" in its title and a small
    "no wake" label in its corner.

    Args:
        data_dir: Dataset root holding ``imgs/`` and ``annotations/``.
        out_path: Output image file.
        count: Number of chips shown (at least 1; fewer if the dataset is smaller).
        columns: Panels per row (at most ``count``).

    Returns:
        ``out_path``; the image is ``columns' * 300`` by ``rows * 300`` pixels, with
        ``columns' = min(columns, chips shown)``.

    Raises:
        InputError: ``count`` or ``columns`` is below 1.
        WakeModelError: The dataset is missing or has no usable chip.
    """
    import torch

    from wakemodel.keypoints import heading_deg
    from wakemodel.preprocess import normalize_image, read_image
    from wakemodel.records import scan_dataset

    if count < 1 or columns < 1:
        raise InputError(f"count ({count}) and columns ({columns}) must be at least 1.")
    records = scan_dataset(data_dir)[:count]
    columns = min(columns, len(records))
    rows = math.ceil(len(records) / columns)
    with _figure_style():
        figure, axes = new_figure(rows, columns)
        for ax, record in zip(axes.flat, records, strict=False):
            image = normalize_image(read_image(record.image_path))
            ax.imshow(
                image,
                cmap="gray",
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
                extent=(0, record.width, record.height, 0),
            )
            size = f"{record.width}x{record.height} px"
            if record.has_wake:
                draw_keypoints(ax, record.keypoints_px, record.visible)
                bearing = heading_deg(
                    torch.from_numpy(np.array(record.keypoints_px)),
                    torch.from_numpy(np.array(record.visible)),
                ).item()
                ax.set_title(f"{record.name}\n{size}, heading {bearing:.0f}°", fontsize="small")
            else:
                ax.text(
                    0.03,
                    0.97,
                    "no wake",
                    transform=ax.transAxes,
                    ha="left",
                    va="top",
                    fontsize="small",
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 2},
                )
                ax.set_title(f"{record.name}\n{size}, no wake", fontsize="small")
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        for ax in axes.flat[len(records) :]:
            ax.set_axis_off()
        handles = _keypoint_handles(VERTEX_COLOR, FAR_END_COLOR, "vertex (vessel)", "wake far end")
        figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        return save_figure(figure, out_path)


def _show_chip(ax: Axes, image: np.ndarray) -> None:
    """Show a raw grey chip ``[H, W]`` stretched to [0, 1], in pixel units (y down), no ticks."""
    from wakemodel.preprocess import normalize_image

    height, width = image.shape
    ax.imshow(
        normalize_image(image),
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        extent=(0, width, height, 0),
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _draw_heading(ax: Axes, prediction: Prediction) -> None:
    """Draw a prediction's wake axis (far end point to vertex) and a heading arrow at the vertex.

    The arrow is 15 % of the chip's longer side, pointing along ``heading_deg``
    (compass bearing, north = image up); nothing is drawn when the heading is NaN.
    """
    if math.isnan(prediction.heading_deg):
        return
    heading_rad = math.radians(prediction.heading_deg)
    direction = np.array([math.sin(heading_rad), -math.cos(heading_rad)])
    vertex = np.asarray(prediction.keypoints_px[0], dtype=np.float64)
    far_end = vertex - prediction.wake_length_px * direction
    ax.plot(
        [far_end[0], vertex[0]],
        [far_end[1], vertex[1]],
        color=PREDICTION_COLOR,
        linewidth=1.4,
        linestyle=":",
    )
    tip = vertex + direction * 0.15 * max(prediction.width, prediction.height)
    ax.annotate(
        "",
        xy=(tip[0], tip[1]),
        xytext=(vertex[0], vertex[1]),
        zorder=4,
        arrowprops={"arrowstyle": "-|>", "color": PREDICTION_COLOR, "linewidth": 2.0},
    )


def _keypoint_handles(
    vertex_color: Any, end_color: Any, vertex_label: str, end_label: str
) -> list[mpl.lines.Line2D]:
    """Legend handles for a vertex (open circle) and a wake end (cross)."""
    return [
        mpl.lines.Line2D(
            [],
            [],
            marker="o",
            linestyle="none",
            markerfacecolor="none",
            markeredgecolor=vertex_color,
            label=vertex_label,
        ),
        mpl.lines.Line2D([], [], marker="x", linestyle="none", color=end_color, label=end_label),
    ]


def _prediction_legend(figure: Figure, *, with_truth: bool) -> None:
    """Add a legend below the figure for predicted (and annotated) keypoints."""
    handles = [
        *_keypoint_handles(
            PREDICTION_COLOR, PREDICTION_COLOR, "predicted vertex", "predicted wake end"
        ),
        mpl.lines.Line2D([], [], color=PREDICTION_COLOR, marker=">", label="heading"),
    ]
    if with_truth:
        handles[:0] = _keypoint_handles(
            VERTEX_COLOR, FAR_END_COLOR, "annotated vertex", "annotated wake end"
        )
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=len(handles),
        frameon=False,
        fontsize="small",
    )


def _prediction_panel(
    image: np.ndarray, prediction: Prediction, *, margin_in: tuple[float, float]
) -> tuple[Figure, Axes]:
    """One chip panel (longer side 6 inches) with the predicted keypoints and heading.

    Args:
        image: Raw grey chip float ``[H, W]``.
        prediction: The prediction for this chip (original-image pixels).
        margin_in: Extra (width, height) in inches for ticks, title and legend.

    Returns:
        The figure and its single axes; call inside :func:`_figure_style`.
    """
    height, width = image.shape
    scale_in = 6.0 / max(width, height)
    panel_in = (max(width * scale_in, 4.0) + margin_in[0], height * scale_in + margin_in[1])
    figure, axes = new_figure(1, 1, panel_size_in=panel_in)
    ax = axes[0, 0]
    _show_chip(ax, image)
    draw_keypoints(ax, prediction.keypoints_px, prediction.visible, predicted=True)
    _draw_heading(ax, prediction)
    return figure, ax


def plot_prediction(
    image: np.ndarray, prediction: Prediction, out_path: str | os.PathLike[str]
) -> Path:
    """Plot one chip with its predicted keypoints, wake axis and heading arrow.

    Args:
        image: Raw grey chip float ``[H, W]`` (as from :func:`wakemodel.preprocess.read_image`).
        prediction: The prediction for this chip (original-image pixels).
        out_path: Output image file.

    Returns:
        ``out_path``; the longer side of the chip panel is 6 inches (600 pixels),
        plus room for the title and legend. A georeferenced prediction is drawn
        as a map by :func:`plot_geo_prediction`.
    """
    if prediction.geo is not None:
        return plot_geo_prediction(image, prediction, out_path)
    with _figure_style():
        figure, ax = _prediction_panel(image, prediction, margin_in=(0.0, 1.0))
        name = Path(prediction.source).name if prediction.source else "chip"
        ax.set_title(
            f"{name}: heading {prediction.heading_deg:.0f}°, wake "
            f"{prediction.wake_length_m:,.0f} m ({prediction.wake_length_px:.0f} px)",
            fontsize="medium",
        )
        _prediction_legend(figure, with_truth=False)
        return save_figure(figure, out_path)


def plot_prediction_grid(
    images: Sequence[np.ndarray],
    predictions: Sequence[Prediction],
    target_keypoints_px: np.ndarray,
    target_visible: np.ndarray,
    out_path: str | os.PathLike[str],
    *,
    columns: int = 4,
    heading_errors_deg: Sequence[float] | None = None,
) -> Path:
    """Plot chips with their annotated and predicted keypoints and predicted headings.

    Args:
        images: Raw grey chips, each float ``[H, W]``.
        predictions: One prediction per chip.
        target_keypoints_px: Annotated keypoints float ``[N, 3, 2]`` (pixels).
        target_visible: Annotated visibility bool ``[N, 3]``.
        out_path: Output image file.
        columns: Panels per row (at most the number of chips).
        heading_errors_deg: Optional heading error per chip (degrees), shown in its title.

    Returns:
        ``out_path``; the image is ``columns' * 300`` by ``rows * 300`` pixels.

    Raises:
        InputError: No chips are given.
    """
    if not images:
        raise InputError("No chips to plot; the dataset is empty.")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    with _figure_style():
        figure, axes = new_figure(rows, columns)
        errors = [math.nan] * len(images) if heading_errors_deg is None else heading_errors_deg
        for ax, image, prediction, truth, truth_visible, error_deg in zip(
            axes.flat,
            images,
            predictions,
            target_keypoints_px,
            target_visible,
            errors,
            strict=False,
        ):
            _show_chip(ax, image)
            draw_keypoints(ax, truth, truth_visible)
            draw_keypoints(ax, prediction.keypoints_px, prediction.visible, predicted=True)
            _draw_heading(ax, prediction)
            name = Path(prediction.source).name if prediction.source else ""
            title = f"{name}\npredicted heading {prediction.heading_deg:.0f}°"
            if not math.isnan(error_deg):
                title += f", error {error_deg:.0f}°"
            ax.set_title(title, fontsize="small")
        for ax in axes.flat[len(images) :]:
            ax.set_axis_off()
        _prediction_legend(figure, with_truth=True)
        return save_figure(figure, out_path)


def plot_error_distributions(
    vertex_error_frac: np.ndarray,
    heading_error_deg: np.ndarray,
    out_path: str | os.PathLike[str],
    *,
    vertex_threshold_frac: float = 0.10,
    heading_threshold_deg: float = 10.0,
) -> Path:
    """Plot histograms of vertex and heading errors with the published bounds marked.

    Args:
        vertex_error_frac: Vertex error as a fraction of the wake length ``[N]``
            (NaN entries are left out).
        heading_error_deg: Heading error in degrees ``[N]`` (NaN left out).
        out_path: Output image file.
        vertex_threshold_frac: Published vertex bound (fraction of wake length).
        heading_threshold_deg: Published heading bound (degrees).

    Returns:
        ``out_path``; the image is 1000 by 400 pixels.
    """
    panels = (
        (
            np.asarray(vertex_error_frac, dtype=np.float64) * 100.0,
            vertex_threshold_frac * 100.0,
            "vertex error (% of wake length)",
            "%",
        ),
        (
            np.asarray(heading_error_deg, dtype=np.float64),
            heading_threshold_deg,
            "heading error (degrees)",
            "°",
        ),
    )
    with _figure_style():
        figure, axes = new_figure(1, 2, panel_size_in=(5.0, 4.0))
        for ax, (values, threshold, label, unit) in zip(axes.flat, panels, strict=True):
            finite = values[np.isfinite(values)]
            if finite.size:
                sns.histplot(
                    x=finite, ax=ax, bins=min(30, max(5, finite.size // 3)), color=_PALETTE[0]
                )
            ax.axvline(
                threshold,
                color=VERTEX_COLOR,
                linestyle="--",
                label=f"published bound {threshold:g}{unit}",
            )
            share = float(np.mean(finite < threshold)) if finite.size else math.nan
            ax.set_title(f"{share:.0%} of {finite.size} chips under {threshold:g}{unit}")
            ax.set_xlabel(label)
            ax.set_ylabel("chips")
            ax.legend(fontsize="small")
        return save_figure(figure, out_path)


def find_metrics_csv(run: str | os.PathLike[str]) -> Path:
    """Locate the Lightning ``metrics.csv`` of a training run.

    Args:
        run: The CSV itself, or a run folder holding it (searched recursively;
            the most recently written one wins).

    Returns:
        The CSV path.

    Raises:
        WakeModelError: No ``metrics.csv`` is found.
    """
    run_path = Path(run)
    if run_path.is_file():
        return run_path
    found = sorted(run_path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise WakeModelError(
            f"No metrics.csv in {run_path}; pass a training run folder or its CSV log."
        )
    return found[-1]


def plot_training_history(run: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Plot train/val loss and each validation metric per epoch of a training run.

    Lightning's CSVLogger writes training and validation values on separate
    rows (NaN elsewhere); rows are averaged per epoch, ignoring NaNs.

    Args:
        run: A run folder or its ``metrics.csv`` (see :func:`find_metrics_csv`).
        out_path: Output image file.

    Returns:
        ``out_path``; one 400 x 300 pixel panel for the losses and one per
        validation metric, 3 panels per row.

    Raises:
        WakeModelError: The CSV is missing, unreadable or has no epoch and loss columns.
    """
    import pandas as pd

    csv_path = find_metrics_csv(run)
    try:
        log = pd.read_csv(csv_path)
    except (OSError, ValueError) as error:
        raise WakeModelError(
            f"Cannot read training log {csv_path} ({type(error).__name__}); "
            "pass a Lightning CSVLogger metrics.csv."
        ) from error
    loss_columns = [name for name in log.columns if "loss" in name]
    if "epoch" not in log.columns or not loss_columns:
        raise WakeModelError(
            f"{csv_path} has no 'epoch' and loss columns; pass a Lightning CSVLogger metrics.csv."
        )
    per_epoch = log.groupby("epoch").mean(numeric_only=True)
    metric_columns = [
        name
        for name in per_epoch.columns
        if name.startswith("val") and "loss" not in name and per_epoch[name].notna().any()
    ]
    panel_count = 1 + len(metric_columns)
    columns = min(panel_count, 3)
    rows = math.ceil(panel_count / columns)
    with _figure_style():
        figure, axes = new_figure(rows, columns, panel_size_in=(4.0, 3.0))
        loss_ax = axes.flat[0]
        for name in loss_columns:
            series = per_epoch[name].dropna()
            loss_ax.plot(series.index, series.to_numpy(), marker="o", label=name)
        loss_ax.set_title("loss")
        loss_ax.legend(fontsize="small")
        for ax, name in zip(axes.flat[1:], metric_columns, strict=False):
            series = per_epoch[name].dropna()
            ax.plot(series.index, series.to_numpy(), marker="o", color=_PALETTE[2])
            ax.set_title(name)
        for ax in axes.flat[:panel_count]:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        for ax in axes.flat[panel_count:]:
            ax.set_axis_off()
        return save_figure(figure, out_path)


def plot_geo_prediction(
    image: np.ndarray, prediction: Prediction, out_path: str | os.PathLike[str]
) -> Path:
    """Plot a georeferenced chip as a map, with the directions of the nearest platforms.

    Beside what :func:`plot_prediction` draws: longitude and latitude ticks
    (along the bottom and left edges), a true-north arrow, a scale bar, and a
    dashed line from the vessel towards each listed platform (to the platform
    when it lies on the chip, else to the chip edge), labelled with its name
    and distance.

    Args:
        image: Raw grey chip float ``[H, W]`` (as from :func:`wakemodel.preprocess.read_image`).
        prediction: The prediction, with ``geo`` set by
            :func:`wakemodel.georef.geolocate_predictions`.
        out_path: Output image file.

    Returns:
        ``out_path``; the longer side of the chip panel is 6 inches (600 pixels),
        plus room for ticks, title and legend.

    Raises:
        InputError: The prediction has no geo fields.
    """
    location = prediction.geo
    if location is None or location.georef is None:
        raise InputError(
            f"{prediction.source or 'chip'} has no geo fields; plot it with plot_prediction."
        )
    georef = location.georef
    with _figure_style():
        figure, ax = _prediction_panel(image, prediction, margin_in=(1.2, 1.6))
        _draw_lonlat_ticks(ax, georef)
        _draw_north_arrow(ax, georef)
        _draw_scale_bar(ax, georef)
        vertex = np.asarray(prediction.keypoints_px[0], dtype=np.float64)
        for platform in location.nearest_platforms:
            _draw_platform_direction(ax, georef, vertex, platform)
        name = Path(prediction.source).name if prediction.source else "chip"
        lines = [
            f"{name}: vessel {location.vessel_lat:.5f}°, {location.vessel_lon:.5f}°, "
            f"true heading {location.heading_true_deg:.1f}°, wake {location.wake_length_m:,.0f} m"
        ]
        if location.nearest_platforms:
            nearest = location.nearest_platforms[0]
            lines.append(
                f"{nearest.name}: {nearest.distance_km:.2f} km at {nearest.bearing_deg:.0f}°, "
                f"CPA {nearest.cpa_km:.2f} km after {nearest.cpa_along_track_km:.2f} km"
            )
        ax.set_title("\n".join(lines), fontsize="small")
        _prediction_legend(figure, with_truth=False)
        return save_figure(figure, out_path)


def _draw_lonlat_ticks(ax: Axes, georef: GeoReference) -> None:
    """Label 4 ticks per axis with the longitude (bottom edge) and latitude (left edge)."""
    height, width = georef.height, georef.width
    x_ticks = np.linspace(0.0, width, 4)
    y_ticks = np.linspace(0.0, height, 4)
    lons, _ = georef.pixel_to_lonlat(x_ticks, np.full(x_ticks.shape, float(height)))
    _, lats = georef.pixel_to_lonlat(np.zeros(y_ticks.shape), y_ticks)
    ax.set_xticks(x_ticks, [f"{lon:.3f}°" for lon in lons], fontsize="x-small")
    ax.set_yticks(y_ticks, [f"{lat:.3f}°" for lat in lats], fontsize="x-small")
    ax.set_xlabel("longitude (bottom edge)", fontsize="small")
    ax.set_ylabel("latitude (left edge)", fontsize="small")


def _draw_north_arrow(ax: Axes, georef: GeoReference) -> None:
    """Draw a true-north arrow labelled N in the chip's top-left corner."""
    side = max(georef.width, georef.height)
    base = np.array([0.12 * georef.width, 0.25 * georef.height])
    bearing = math.radians(float(georef.image_bearing_deg(base[0], base[1], 0.0)))
    direction = np.array([math.sin(bearing), -math.cos(bearing)])
    tip = base + 0.1 * side * direction
    label = tip + 0.04 * side * direction
    ax.annotate(
        "",
        xy=(tip[0], tip[1]),
        xytext=(base[0], base[1]),
        zorder=5,
        arrowprops={"arrowstyle": "-|>", "color": "white", "linewidth": 1.5},
    )
    ax.text(
        label[0],
        label[1],
        "N",
        color="white",
        fontweight="bold",
        ha="center",
        va="center",
        zorder=5,
    )


def _draw_scale_bar(ax: Axes, georef: GeoReference) -> None:
    """Draw a scale bar (a round number of metres, at most 30% of the width) bottom right."""
    pixel_m = georef.pixel_size_m[0]
    longest_m = 0.3 * georef.width * pixel_m
    steps = [unit * 10**power for power in range(7) for unit in (1, 2, 5)]
    length_m = max((step for step in steps if step <= longest_m), default=1)
    length_px = length_m / pixel_m
    right, y = 0.95 * georef.width, 0.93 * georef.height
    ax.plot(
        [right - length_px, right],
        [y, y],
        color="white",
        linewidth=3,
        zorder=5,
        solid_capstyle="butt",
    )
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    ax.text(
        right - length_px / 2,
        y - 0.03 * georef.height,
        label,
        color="white",
        ha="center",
        va="bottom",
        fontsize="x-small",
        zorder=5,
    )


def _draw_platform_direction(
    ax: Axes, georef: GeoReference, vertex: np.ndarray, platform: PlatformApproach
) -> None:
    """Draw a dashed arrow from the vessel towards a platform, labelled with name and km."""
    platform_x, platform_y = (
        float(value) for value in georef.lonlat_to_pixel(platform.lon, platform.lat)
    )
    on_chip = 0.0 <= platform_x <= georef.width and 0.0 <= platform_y <= georef.height
    if on_chip:
        end = np.array([platform_x, platform_y])
        ax.scatter([platform_x], [platform_y], marker="^", s=70, color=PLATFORM_COLOR, zorder=4)
    else:
        bearing = math.radians(
            float(georef.image_bearing_deg(vertex[0], vertex[1], platform.bearing_deg))
        )
        direction = np.array([math.sin(bearing), -math.cos(bearing)])
        bounds = np.array([georef.width, georef.height], dtype=np.float64)
        with np.errstate(divide="ignore"):
            to_edge = np.where(
                direction > 0,
                (bounds - vertex) / direction,
                np.where(direction < 0, -vertex / direction, np.inf),
            )
        end = vertex + direction * float(to_edge.min())
    ax.annotate(
        "",
        xy=(end[0], end[1]),
        xytext=(vertex[0], vertex[1]),
        zorder=4,
        arrowprops={
            "arrowstyle": "-|>",
            "color": PLATFORM_COLOR,
            "linewidth": 1.4,
            "linestyle": "--",
        },
    )
    ax.text(
        end[0],
        end[1],
        f"{platform.name}\n{platform.distance_km:.1f} km",
        color=PLATFORM_COLOR,
        fontsize="x-small",
        fontweight="bold",
        zorder=5,
        ha="right" if end[0] > 0.5 * georef.width else "left",
        va="bottom" if end[1] > 0.5 * georef.height else "top",
    )


_STD_FLOOR_DEG = 1e-2
"""Smallest heading error or std drawn on the log axes of :func:`plot_calibration` (degrees)."""


def plot_calibration(
    heading_error_deg: np.ndarray,
    heading_std_deg: np.ndarray,
    wake_score: np.ndarray,
    has_wake: np.ndarray,
    path: str | os.PathLike[str],
    *,
    min_wake_score: float = 0.5,
) -> Path:
    """Plot how far the predicted heading std and wake score can be trusted.

    Three panels:

    - actual heading error against predicted heading std (log-log, values
      clipped at 0.01°) with the 90 % interval edge ``error = 1.645·std``; the
      title gives the Spearman correlation and the share of chips under the edge;
    - observed against nominal interval coverage (reliability curve, nominal
      0.1 to 0.99) with the diagonal of a calibrated model;
    - wake-score histograms of chips with a wake and of negatives with the
      threshold (only the wakes' histogram when there are no negatives).

    The heading panels use the chips with a true wake and finite error and std.

    Args:
        heading_error_deg: Absolute heading errors ``[N]`` in degrees (NaN for negatives).
        heading_std_deg: Predicted 1-sigma heading stds ``[N]`` in degrees.
        wake_score: Wake probabilities ``[N]`` in [0, 1] (NaN ignored).
        has_wake: bool ``[N]``, the annotation holds a wake.
        path: Output image file.
        min_wake_score: Wake-score threshold drawn in the third panel.

    Returns:
        ``path``; the image is 1500 by 450 pixels.

    Raises:
        InputError: The arrays differ in size.
    """
    from wakemodel.calibration import INTERVAL_Z90, heading_calibration, wake_detection

    positive = np.asarray(has_wake).ravel().astype(bool)
    error = np.asarray(heading_error_deg, dtype=np.float64).ravel()
    std = np.asarray(heading_std_deg, dtype=np.float64).ravel()
    score = np.asarray(wake_score, dtype=np.float64).ravel()
    if not error.size == std.size == score.size == positive.size:
        raise InputError(
            f"heading_error_deg ({error.size}), heading_std_deg ({std.size}), wake_score "
            f"({score.size}) and has_wake ({positive.size}) must have one value per chip."
        )
    error, std = error[positive], std[positive]
    finite = np.isfinite(error) & np.isfinite(std)
    error, std = error[finite], std[finite]
    heading = heading_calibration(error, std)
    detection = wake_detection(score, positive, threshold=min_wake_score)
    with _figure_style():
        figure, axes = new_figure(1, 3, panel_size_in=(5.0, 4.5))
        _draw_error_vs_std(axes[0, 0], error, std, heading, INTERVAL_Z90)
        _draw_reliability(axes[0, 1], error, std)
        _draw_wake_scores(axes[0, 2], score, positive, detection, min_wake_score)
        return save_figure(figure, path)


def _panel_note(ax: Axes, text: str) -> None:
    """Write ``text`` in the middle of an empty panel."""
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize="small",
        bbox={"facecolor": "white", "edgecolor": "none"},
    )


def _draw_error_vs_std(
    ax: Axes, error: np.ndarray, std: np.ndarray, heading: dict[str, float], z: float
) -> None:
    """Scatter heading error against predicted std (log-log) with the 90 % interval edge."""
    ax.set_xlabel("predicted heading std (degrees)")
    ax.set_ylabel("actual heading error (degrees)")
    if not error.size:
        ax.set_title("heading error vs predicted std")
        _panel_note(ax, "no chip with a wake and\na finite error and std")
        return
    shown_error = np.clip(error, _STD_FLOOR_DEG, None)
    shown_std = np.clip(std, _STD_FLOOR_DEG, None)
    ax.scatter(
        shown_std,
        shown_error,
        s=10,
        alpha=min(0.8, max(0.15, 200.0 / error.size)),
        color=_PALETTE[0],
        edgecolors="none",
    )
    low = float(min(shown_std.min(), shown_error.min() / z))
    high = float(max(shown_std.max(), shown_error.max() / z))
    edge_std = np.geomspace(low / 1.5, high * 1.5, 50)
    coverage = heading["interval_coverage"]
    coverage_text = f"{coverage:.0%}" if math.isfinite(coverage) else "n/a"
    spearman = heading["spearman"]
    spearman_text = f"{spearman:.2f}" if math.isfinite(spearman) else "n/a"
    ax.plot(
        edge_std,
        z * edge_std,
        color=VERTEX_COLOR,
        linestyle="--",
        label=f"error = {z:.3f}·std (90% edge): {coverage_text} below",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(
        f"Spearman {spearman_text}, {coverage_text} of {error.size} within 90% interval",
        fontsize="small",
    )
    ax.legend(fontsize="small", loc="upper left")


def _draw_reliability(ax: Axes, error: np.ndarray, std: np.ndarray) -> None:
    """Observed against nominal coverage of the predicted heading intervals."""
    from wakemodel.calibration import observed_coverage

    nominal = np.linspace(0.1, 0.99, 90)
    observed = observed_coverage(error, std, nominal)
    ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", linestyle=":", label="calibrated")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("nominal interval coverage")
    ax.set_ylabel("observed coverage")
    if np.all(np.isnan(observed)):
        ax.set_title("interval reliability")
        _panel_note(ax, "fewer than 3 chips with\na finite error and std")
        return
    ax.plot(nominal, observed, color=_PALETTE[0], linewidth=1.8, label="model")
    at_90 = float(observed_coverage(error, std, [0.9])[0])
    ax.scatter([0.9], [at_90], color=VERTEX_COLOR, zorder=3, label=f"90% → {at_90:.0%}")
    ax.set_title(f"interval reliability ({error.size} chips with a wake)", fontsize="small")
    ax.legend(fontsize="small", loc="upper left")


def _draw_wake_scores(
    ax: Axes,
    score: np.ndarray,
    positive: np.ndarray,
    detection: dict[str, float],
    threshold: float,
) -> None:
    """Wake-score histograms of wakes and negatives with the threshold line."""
    finite = np.isfinite(score)
    wakes, negatives = score[finite & positive], score[finite & ~positive]
    bins = np.linspace(0.0, 1.0, 21)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("wake score")
    ax.set_ylabel("chips")
    if not wakes.size and not negatives.size:
        ax.set_title("wake score")
        _panel_note(ax, "no finite wake score")
        return
    if wakes.size:
        ax.hist(np.clip(wakes, 0.0, 1.0), bins=bins, alpha=0.6, color=_PALETTE[2], label="wake")
    if negatives.size:
        ax.hist(
            np.clip(negatives, 0.0, 1.0), bins=bins, alpha=0.6, color=_PALETTE[1], label="negative"
        )
    ax.axvline(threshold, color=VERTEX_COLOR, linestyle="--", label=f"threshold {threshold:g}")
    recall = detection["wake_recall"]
    parts = [f"recall {recall:.0%}" if math.isfinite(recall) else "no wakes"]
    if negatives.size:
        parts.append(f"rejection {detection['negative_rejection']:.0%}")
        if math.isfinite(detection["roc_auc"]):
            parts.append(f"AUC {detection['roc_auc']:.3f}")
    else:
        parts.append("no negatives")
    ax.set_title("wake score: " + ", ".join(parts), fontsize="small")
    ax.legend(fontsize="small", loc="upper left")


def plot_scan(result: ScanResult, out_path: str | os.PathLike[str], max_side: int = 1600) -> Path:
    """Quick-look of a scanned scene: the band with every vessel and its heading.

    The band is read decimated to at most ``max_side`` pixels a side. A vessel
    with a readable wake gets its wake components (lines from the vertex) and a
    heading arrow; one without gets a hollow circle at its input position.

    Args:
        result: A :func:`wakemodel.scan.scan` result (its scene is reopened).
        out_path: Output image file (PNG).
        max_side: Largest side of the decimated band (pixels).

    Returns:
        ``out_path`` (8 x 8 inch panel, 800 x 800 pixels plus margins).
    """
    from wakemodel.preprocess import normalize_image
    from wakemodel.scene import open_scene

    with open_scene(result.scene, result.band) as scene:
        overview, _ = scene.overview(max_side)
        georef = scene.georef
        width, height = scene.width, scene.height
    arrow_px = 0.03 * max(width, height)
    with _figure_style():
        figure, axes = new_figure(1, 1, panel_size_in=(8.0, 8.0))
        ax = axes[0, 0]
        ax.imshow(
            normalize_image(overview),
            cmap="gray",
            extent=(0, width, height, 0),
            interpolation="antialiased",
        )
        ax.grid(False)
        for vessel in result.vessels:
            x, y = vessel.point_px
            if not vessel.wake_found:
                ax.plot(x, y, "o", mfc="none", mec="0.7", ms=6, mew=1.0)
                continue
            for slot in range(1, len(vessel.keypoints_px)):
                if vessel.prediction.visible[slot]:
                    end_x, end_y = vessel.keypoints_px[slot]
                    ax.plot([x, end_x], [y, end_y], color=FAR_END_COLOR, linewidth=1.2)
            bearing = math.radians(vessel.prediction.heading_deg)
            ax.annotate(
                "",
                xy=(x + arrow_px * math.sin(bearing), y - arrow_px * math.cos(bearing)),
                xytext=(x, y),
                arrowprops={"arrowstyle": "-|>", "color": VERTEX_COLOR, "linewidth": 1.2},
            )
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        _draw_lonlat_ticks(ax, georef)
        _draw_north_arrow(ax, georef)
        _draw_scale_bar(ax, georef)
        ax.set_title(
            f"{result.scene.name} ({result.band}): {len(result.vessels)} vessels, "
            f"{result.wakes_found} with a readable wake (arrows: heading; circles: no wake)",
            fontsize="small",
        )
        return save_figure(figure, out_path)
