"""Command-line interface: a thin Click layer over the library functions.

Every command parses its options and calls a function that is usable from
Python too. Heavy modules (torch, Lightning) are imported inside the commands
so that ``--help`` and light commands start fast. Known errors
(:class:`~wakemodel.errors.WakeModelError`) become one line on stderr and exit
code 2; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from wakemodel import __version__
from wakemodel.errors import WakeModelError

ACCELERATOR_CHOICES = ["auto", "cpu", "gpu", "cuda", "mps"]


class _WakeGroup(click.Group):
    """A Click group that turns known errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (WakeModelError, OSError) as exc:
            if ctx.find_root().params.get("verbose"):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"Error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=_WakeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wakemodel")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging and full tracebacks.")
def main(verbose: bool) -> None:
    """Find ship wakes in Sentinel-2 chips: vessel position and heading."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s" if verbose else "%(message)s",
    )


@main.group()
def plot() -> None:
    """Plot datasets, training curves, predictions and error distributions."""



_PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def _prediction_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options shared by the commands that run a model to ``command``."""
    options = [
        click.option("--accelerator", type=click.Choice(ACCELERATOR_CHOICES), default="auto",
                     show_default=True, help="Device to run on."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Chips per network call."),
        click.option("--tta", is_flag=True,
                     help="Average predictions over the 8 flips/rotations of the input."),
        click.option("--gsd", "gsd_m", type=click.FloatRange(min=0, min_open=True), default=10.0,
                     show_default=True, help="Ground sampling distance in metres per pixel."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("infer")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path, allow_dash=True),
    help="Write the results as JSON to this file ('-' for stdout, which replaces the table).",
)
@click.option(
    "--plot", "plot_path", type=click.Path(path_type=Path),
    help="Save each chip with its keypoints, wake axis and heading arrow: a .png file "
    "for one image, else a folder (one <name>_wake.png per image).",
)
@click.option(
    "--crs", help="CRS of chips georeferenced by a world file (.pgw/.wld) without a .prj "
    "beside them, e.g. EPSG:32631 (GeoTIFFs carry their own).",
)
@click.option(
    "--platforms", "platforms_csv", type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of platforms (lat, lon, optional name, id): adds, for georeferenced chips, "
    "the nearest platform's distance, bearing, angle to the heading and the closest "
    "point of approach.",
)
@click.option("--nearest", "nearest_count", type=click.IntRange(min=1), default=1,
              show_default=True, help="Platforms listed per vessel (with --platforms).")
@click.option(
    "--within-km", type=click.FloatRange(min=0, min_open=True),
    help="Flag vessels closer than this to their nearest platform (km; needs --platforms).",
)
@_prediction_options
def infer_command(
    model: Path, images: tuple[Path, ...], json_path: Path | None, plot_path: Path | None,
    crs: str | None, platforms_csv: Path | None, nearest_count: int, within_km: float | None,
    accelerator: str, batch_size: int, tta: bool, gsd_m: float,
) -> None:
    """Find the wake in each IMAGE (files or folders) with MODEL (.ckpt, or .onnx from export).

    Prints, per chip, the vertex and wake ends in original-image pixels, the
    heading (compass bearing, north up) and the wake length in pixels and metres.
    For georeferenced chips (GeoTIFF, or a world file plus --crs or a .prj) it
    adds the vessel's latitude/longitude, its true heading, the wake length from
    the actual pixel size and, with --platforms, the nearest platforms and the
    closest point of approach; other chips get one line saying why not.
    """
    from wakemodel import infer
    from wakemodel.errors import InputError

    paths = infer.find_images(images)
    several = len(paths) > 1
    if several and plot_path is not None and plot_path.suffix.lower() in _PLOT_SUFFIXES:
        raise InputError(f"--plot {plot_path}: several images given; pass a folder instead.")
    platforms = _read_geo_options(crs, platforms_csv, within_km)
    predictor = infer.load_model(model, accelerator=accelerator)

    def skip(source: str, error: WakeModelError) -> None:
        click.echo(f"Skipping {source}: {error}", err=True)

    predictions = infer.predict(
        predictor, paths, batch_size=batch_size, tta=tta, gsd_m=gsd_m,
        on_unreadable=skip if several else None,
    )
    if not predictions:
        raise WakeModelError("None of the images could be read; see the lines above.")
    requested = crs is not None or platforms_csv is not None
    predictions = _add_geo_fields(
        predictions, crs, platforms, nearest_count, within_km, requested=requested
    )
    json_to_stdout = _write_json(
        json_path,
        {"model": str(model), "tta": tta, "predictions": [p.to_dict() for p in predictions]},
    )
    if not json_to_stdout:
        click.echo(_prediction_table(predictions))
        for prediction in predictions:
            if prediction.geo is not None:
                click.echo(f"{Path(prediction.source).name}: {prediction.geo.summary()}")
    if plot_path is not None:
        for saved in _plot_predictions(predictions, plot_path, single_file=not several):
            click.echo(f"Saved {saved}", err=json_to_stdout)


def _write_json(json_path: Path | None, document: dict[str, Any]) -> bool:
    """Write ``document`` as indented JSON to ``json_path`` (atomically) or, for ``-``, stdout.

    Returns:
        True when the JSON went to stdout (the table is then left out).
    """
    if json_path is None:
        return False
    import json

    from wakemodel._io import atomic_write_text

    text = json.dumps(document, indent=2)
    if str(json_path) == "-":
        click.echo(text)
        return True
    atomic_write_text(json_path, text + "\n")
    return False


def _read_geo_options(
    crs: str | None, platforms_csv: Path | None, within_km: float | None
) -> Any:
    """Check ``--crs`` and read ``--platforms`` before any inference runs.

    Returns:
        ``wakemodel.georef.Platforms``, or None without ``--platforms`` (or
        without rasterio and pyproj, when no geo option is given).
    """
    if within_km is not None and platforms_csv is None:
        raise WakeModelError("--within-km needs --platforms CSV (the platforms to measure).")
    try:
        from wakemodel import georef
    except ImportError as exc:
        if crs is not None or platforms_csv is not None:
            raise WakeModelError(
                f"--crs and --platforms need rasterio and pyproj ({exc}); "
                "install them with pip install 'wakemodel[geo]'."
            ) from exc
        return None
    if crs is not None:
        georef.parse_crs(crs)
    return None if platforms_csv is None else georef.read_platforms(platforms_csv)


def _add_geo_fields(
    predictions: list[Any], crs: str | None, platforms: Any, nearest_count: int,
    within_km: float | None, *, requested: bool,
) -> list[Any]:
    """Geolocate predictions of georeferenced chips; say on stderr why others have no geo fields.

    Without a geo option (``requested`` false) and no georeferenced chip at
    all, one line sums up; otherwise each chip without geo fields gets a line.
    """
    try:
        from wakemodel.georef import geolocate_predictions
    except ImportError:
        click.echo("No geo fields: rasterio and pyproj are not installed "
                   "(pip install 'wakemodel[geo]').", err=True)
        return predictions
    located = geolocate_predictions(predictions, crs=crs, platforms=platforms,
                                    nearest_count=nearest_count, within_km=within_km)
    notes = [prediction.geo_note for prediction in located if prediction.geo_note]
    if notes and not requested and len(notes) == len(located):
        click.echo(f"No geo fields: no image is georeferenced (e.g. {notes[0]})", err=True)
    else:
        for note in notes:
            click.echo(f"No geo fields for {note}", err=True)
    return located


def _prediction_table(predictions: list[Any]) -> str:
    """Format predictions (``wakemodel.infer.Prediction``) as a plain-text table."""

    def point(prediction: Any, slot: int) -> str:
        if not prediction.visible[slot]:
            return "-"
        x, y = prediction.keypoints_px[slot]
        return f"({x:.1f}, {y:.1f})"

    header = (
        f"{'image':<24} {'vertex x,y px':>16} {'end 1 x,y px':>16} {'end 2 x,y px':>16} "
        f"{'heading':>8} {'length px':>10} {'length m':>10}"
    )
    rows = [header]
    for prediction in predictions:
        name = Path(prediction.source).name if prediction.source else "<array>"
        rows.append(
            f"{name:<24} {point(prediction, 0):>16} {point(prediction, 1):>16} "
            f"{point(prediction, 2):>16} {prediction.heading_deg:>7.1f}° "
            f"{prediction.wake_length_px:>10.1f} {prediction.wake_length_m:>10.0f}"
        )
    return "\n".join(rows)


def _plot_predictions(
    predictions: list[Any], plot_path: Path, *, single_file: bool
) -> list[Path]:
    """Save one annotated chip per prediction to ``plot_path`` (a file, or a folder)."""
    from wakemodel.plots import plot_prediction
    from wakemodel.preprocess import read_image

    used_names: set[str] = set()
    saved = []
    for prediction in predictions:
        if single_file and plot_path.suffix.lower() in _PLOT_SUFFIXES:
            target = plot_path
        else:
            stem = Path(prediction.source).stem
            name = f"{stem}_wake.png"
            index = 1
            while name in used_names:
                index += 1
                name = f"{stem}_{index}_wake.png"
            used_names.add(name)
            target = plot_path / name
        saved.append(plot_prediction(read_image(Path(prediction.source)), prediction, target))
    return saved


@main.command("evaluate")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True),
              help="Write the summary and per-chip errors as JSON ('-' for stdout).")
@click.option(
    "--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
    help="Write predictions.png, errors.png and (with a training log) history.png here.",
)
@click.option(
    "--history", "history_log", type=click.Path(path_type=Path),
    help="Training run folder or metrics.csv for history.png; default: a metrics.csv "
    "in MODEL's folder or its parent.",
)
@_prediction_options
def evaluate_command(
    model: Path, data_dir: Path, json_path: Path | None, plots_dir: Path | None,
    history_log: Path | None, accelerator: str, batch_size: int, tta: bool, gsd_m: float,
) -> None:
    """Measure MODEL on the annotated chips of DATA_DIR (imgs/ + annotations/).

    Prints median, mean and 90th percentile of the vertex error (pixels, metres,
    fraction of wake length), heading error (degrees) and PCK@5%, and the share
    of chips within the published bounds (vertex < 10% of wake length, heading
    < 10 degrees).
    """
    from wakemodel.evaluate import evaluate, find_training_log

    report = evaluate(
        model, data_dir, batch_size=batch_size, tta=tta, gsd_m=gsd_m, accelerator=accelerator
    )
    json_to_stdout = _write_json(json_path, report.to_dict())
    if not json_to_stdout:
        click.echo(report.format_table())
    if plots_dir is not None:
        from wakemodel.plots import plot_training_history

        saved = [
            report.plot_predictions(plots_dir / "predictions.png"),
            report.plot_errors(plots_dir / "errors.png"),
        ]
        run_log = history_log or find_training_log(model)
        if run_log is not None:
            saved.append(plot_training_history(run_log, plots_dir / "history.png"))
        for path in saved:
            click.echo(f"Saved {path}", err=json_to_stdout)


@plot.command("history")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="curves.png",
              show_default=True, help="Output image file.")
def plot_history_command(run: Path, out: Path) -> None:
    """Plot train/val loss and validation metrics per epoch of a training RUN.

    RUN is a run folder (searched for Lightning's metrics.csv) or the CSV itself.
    """
    from wakemodel.plots import plot_training_history

    click.echo(f"Saved {plot_training_history(run, out)}")


@plot.command("predictions")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="grid.png",
              show_default=True, help="Output image file.")
@click.option("--count", type=click.IntRange(min=1), default=12, show_default=True,
              help="Number of chips shown (the first ones by name).")
@_prediction_options
def plot_predictions_command(
    model: Path, data_dir: Path, out: Path, count: int, accelerator: str, batch_size: int,
    tta: bool, gsd_m: float,
) -> None:
    """Plot a grid of DATA_DIR chips with ground truth and MODEL's predictions."""
    from wakemodel.evaluate import evaluate

    report = evaluate(
        model, data_dir, batch_size=batch_size, tta=tta, gsd_m=gsd_m, accelerator=accelerator,
        limit=count,
    )
    click.echo(f"Saved {report.plot_predictions(out, count=count)}")


@plot.command("errors")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="errors.png",
              show_default=True, help="Output image file.")
@_prediction_options
def plot_errors_command(
    model: Path, data_dir: Path, out: Path, accelerator: str, batch_size: int, tta: bool,
    gsd_m: float,
) -> None:
    """Plot MODEL's vertex and heading error distributions on DATA_DIR, bounds marked."""
    from wakemodel.evaluate import evaluate

    report = evaluate(
        model, data_dir, batch_size=batch_size, tta=tta, gsd_m=gsd_m, accelerator=accelerator
    )
    click.echo(f"Saved {report.plot_errors(out)}")


@main.command("train")
@click.option("--data", "data_dir", type=click.Path(path_type=Path),
              default=Path("data/ShipWakes"), show_default=True,
              help="Dataset root with imgs/ and annotations/.")
@click.option("--epochs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Training epochs (also the learning-rate schedule length).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Chips per batch (per device).")
@click.option("--image-size", type=click.IntRange(min=32), default=224, show_default=True,
              help="Network input side in pixels.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.001, show_default=True,
              help="Peak AdamW learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0001, show_default=True,
              help="AdamW weight decay.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Linear learning-rate warm-up in epochs.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for weights, data split, shuffling and augmentation.")
@click.option("--accelerator", type=click.Choice(ACCELERATOR_CHOICES), default="auto",
              show_default=True,
              help="auto: CUDA, else Apple MPS, else CPU; gpu: CUDA or MPS.")
@click.option("--precision", type=click.Choice(["32", "16-mixed", "bf16-mixed", "bf16-true",
                                               "16-true", "64"]),
              show_default="bf16-mixed on CUDA GPUs that support it, else 32",
              help="Numeric precision (Lightning).")
@click.option("--devices", default="auto", show_default=True,
              help="Devices per machine: auto, a count (2) or ids (0,1).")
@click.option("--num-nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines for multi-node DDP.")
@click.option("--strategy", default="auto", show_default=True,
              help="Lightning strategy: auto (DDP for several devices), ddp, ...")
@click.option("--workers", type=click.IntRange(min=0), show_default="chosen by the data module",
              help="DataLoader worker processes.")
@click.option("--augment-on", type=click.Choice(["auto", "workers", "device"]), default="auto",
              show_default=True,
              help="Where augmentation runs: per chip in the loader workers, or per batch on "
              "the training device (auto: the device on CUDA/MPS, workers on the CPU).")
@click.option("--logger", "logger_name", type=click.Choice(["csv", "wandb", "none"]),
              default="csv", show_default=True,
              help="csv: metrics.csv in the run folder; wandb: CSV plus Weights & Biases "
              "(offline without an API key); none: no logs.")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path),
              default=Path("checkpoints"), show_default=True,
              help="Folder for the best checkpoint and last.ckpt.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=Path("runs"),
              show_default=True,
              help="Folder of per-run log folders (RUN_DIR/RUN_NAME/metrics.csv).")
@click.option("--run-name", show_default="a timestamp", help="Name of this run's log folder.")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue from this checkpoint (e.g. checkpoints/last.ckpt) with its epoch, "
              "optimizer and scheduler state.")
@click.option("--deterministic", is_flag=True,
              help="Deterministic algorithms (identical reruns with the same seed on CPU).")
@click.option("--fast-dev-run", is_flag=True,
              help="Smoke test: one train and one val batch, no checkpoints or logs.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Start from ImageNet weights (downloaded; random weights when offline).")
@click.option("--weights", "weights_path", type=click.Path(path_type=Path),
              help="Local torchvision efficientnet_b0 state dict to start from.")
@click.option("--max-time", help="Wall-clock limit DD:HH:MM:SS (stops after that time).")
@click.option("--compile", is_flag=True,
              help="Compile the network with torch.compile (slow start; for GPUs and long runs).")
@click.option("--auto-batch-size", is_flag=True,
              help="Largest batch that fits the GPU (Lightning's batch-size finder); "
              "ignored with a warning on CPU.")
def train_command(**options: Any) -> None:
    """Train the wake keypoint model; writes checkpoints and CSV logs.

    Prints the device at the start and, at the end, the best epoch, its
    validation metrics and the path of the best checkpoint.
    """
    from wakemodel.train import TrainConfig, train

    options["logger"] = options.pop("logger_name")
    result = train(TrainConfig(**options))
    click.echo(_train_summary(result))


def _train_summary(result: Any) -> str:
    """Format a ``wakemodel.train.TrainResult`` as a table plus checkpoint paths."""
    from rich.console import Console
    from rich.table import Table

    best_epoch = "-" if result.best_epoch is None else result.best_epoch
    table = Table(title=f"Best epoch: {best_epoch}")
    table.add_column("validation metric")
    table.add_column("value", justify="right")
    for name, value in sorted(result.best_metrics.items()):
        table.add_row(name, f"{value:.4g}")
    console = Console(width=100, color_system=None)
    with console.capture() as capture:
        console.print(table)
    lines = [
        capture.get().rstrip(),
        f"Device: {result.device.description}",
        f"Run folder (metrics.csv): {result.run_dir}",
        f"Best checkpoint: {result.best_checkpoint or 'none written'}",
    ]
    if result.last_checkpoint is not None:
        lines.append(f"Last checkpoint: {result.last_checkpoint} (continue with --resume)")
    return "\n".join(lines)


@main.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(min=1), default=600, show_default=True,
              help="Number of chips.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed (same seed -> byte-identical files).")
@click.option("--min-size", type=click.IntRange(min=32), default=200, show_default=True,
              help="Smallest chip side in pixels.")
@click.option("--max-size", type=click.IntRange(min=32), default=900, show_default=True,
              help="Largest chip side in pixels.")
@click.option("--workers", type=click.IntRange(min=1), show_default="the available CPU cores",
              help="Parallel processes (the files do not depend on it).")
@click.option("--geotiff", is_flag=True,
              help="Write georeferenced GeoTIFF chips (imgs/*.tif: UTM 31N/32N, 10 m pixels, "
              "North Sea) instead of PNGs; same pixels and annotations.")
def synth_command(
    out_dir: Path, count: int, seed: int, min_size: int, max_size: int, workers: int | None,
    geotiff: bool,
) -> None:
    """Write COUNT synthetic Sentinel-2 wake chips to OUT_DIR in the dataset's layout."""
    import os

    from wakemodel.synthetic import generate_dataset

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
    root = generate_dataset(
        out_dir, count, seed, min_size=min_size, max_size=max_size, workers=workers,
        geotiff=geotiff,
    )
    click.echo(f"Wrote {count} chips to {root} (imgs/{'*.tif' if geotiff else ''}, annotations/).")
    click.echo(f"Next: python cli.py plot dataset {root} --out dataset.png")


@main.command("download")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data/ShipWakes"), show_default=True,
              help="Dataset folder to create (imgs/ and annotations/).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=30.0, show_default=True, help="Network timeout per request in seconds.")
@click.option("--api-url", default="https://zenodo.org/api/records/7947694", show_default=True,
              help="Zenodo API address of the record (a mirror or a test server).")
def download_command(dest: Path, timeout_s: float, api_url: str) -> None:
    """Download the ship-wake dataset from Zenodo, verify checksums and unpack it."""
    from wakemodel.download import download_dataset

    root = download_dataset(dest, api_url=api_url, timeout_s=timeout_s)
    click.echo(f"Dataset ready in {root}.")
    click.echo(f"Next: python cli.py plot dataset {root} --out dataset.png, "
               f"then python cli.py train --data {root}")


@plot.command("dataset")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="grid.png",
              show_default=True, help="Output image file.")
@click.option("--count", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of chips shown (the first ones by name).")
def plot_dataset_command(data_dir: Path, out: Path, count: int) -> None:
    """Plot a grid of DATA_DIR chips with their annotated keypoints."""
    from wakemodel.plots import plot_dataset_grid

    click.echo(f"Saved {plot_dataset_grid(data_dir, out, count=count)}")


@main.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx",
              show_default=True, help="Export format.")
@click.option("--int8", is_flag=True,
              help="Quantise to 8 bits (ONNX Runtime dynamic quantisation; about 3x smaller).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="model.onnx",
              show_default=True, help="Output .onnx file.")
def export_command(model: Path, export_format: str, int8: bool, out: Path) -> None:
    """Export the checkpoint MODEL to ONNX for `infer` (needs the [onnx] extra).

    The file takes float32 [B, 1, S, S] chips in [0, 1] (any batch size B) and
    stores S and the preprocessing in its metadata.
    """
    from wakemodel.export import export_onnx

    path = export_onnx(model, out, int8=int8)
    size_mb = path.stat().st_size / 1e6
    click.echo(f"Saved {path} ({export_format}, {'int8' if int8 else 'fp32'}, {size_mb:.1f} MB)")


@main.command("nearest")
@click.argument("platforms_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--lat", "vessel_lat", type=click.FloatRange(-90, 90),
              help="Vessel latitude in degrees (with --lon).")
@click.option("--lon", "vessel_lon", type=float, help="Vessel longitude in degrees (with --lat).")
@click.option("--vessels", "vessels_csv", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV of vessels (lat, lon, optional name or id) instead of --lat/--lon.")
@click.option("--k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nearest platforms listed per vessel.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def nearest_command(
    platforms_csv: Path, vessel_lat: float | None, vessel_lon: float | None,
    vessels_csv: Path | None, k: int, as_json: bool,
) -> None:
    """Print the K platforms of PLATFORMS_CSV nearest to each vessel (great-circle km).

    PLATFORMS_CSV has a header with lat, lon (degrees) and optionally name or id.
    """
    import json
    import math

    import numpy as np

    from wakemodel.errors import InputError
    from wakemodel.geo import LabelledPoints, nearest_records, read_points_csv

    if vessels_csv is not None:
        if vessel_lat is not None or vessel_lon is not None:
            raise InputError("Give either --vessels or --lat/--lon, not both.")
        vessels = read_points_csv(vessels_csv)
    elif vessel_lat is None or vessel_lon is None or not math.isfinite(vessel_lon):
        raise InputError("Give the vessel as --lat and --lon (finite degrees) or --vessels CSV.")
    else:
        vessels = LabelledPoints(np.array([vessel_lat]), np.array([vessel_lon]), ["vessel"])
    records = nearest_records(read_points_csv(platforms_csv), vessels, k)
    if as_json:
        click.echo(json.dumps({"platforms": str(platforms_csv), "vessels": records}, indent=2))
        return
    rows = [f"{'vessel':<16} {'lat':>9} {'lon':>10} {'rank':>4}  {'platform':<16} "
            f"{'distance km':>12}"]
    for record in records:
        for match in record["nearest"]:
            rows.append(f"{record['vessel']:<16} {record['lat']:>9.4f} {record['lon']:>10.4f} "
                        f"{match['rank']:>4}  {match['name']:<16} {match['distance_km']:>12.3f}")
    click.echo("\n".join(rows))


@main.command("demo")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data/synthetic"), show_default=True,
              help="Synthetic training set (generated when absent; held-out chips go to "
              "DATA-holdout).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/demo"), show_default=True,
              help="Folder for checkpoints, logs, evaluation.json and figures.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Training epochs.")
@click.option("--image-size", type=click.IntRange(min=32), default=96, show_default=True,
              help="Network input side in pixels.")
@click.option("--count", type=click.IntRange(min=10), default=600, show_default=True,
              help="Synthetic training chips to generate when the set is absent.")
@click.option("--accelerator", type=click.Choice(ACCELERATOR_CHOICES), default="cpu",
              show_default=True, help="Device for training and inference.")
def demo_command(
    data_dir: Path, out_dir: Path, epochs: int, image_size: int, count: int, accelerator: str
) -> None:
    """Run the main job: synthetic data, short training, evaluation, inference, figures."""
    from wakemodel.demo import run_demo

    result = run_demo(
        data_dir, out_dir, count=count, epochs=epochs, image_size=image_size,
        accelerator=accelerator,
    )
    click.echo(_train_summary(result.training))
    click.echo(result.evaluation.format_table())
    click.echo(_prediction_table([result.prediction]))
    click.echo(f"Evaluation: {result.report_path}")
    for figure in result.figures:
        click.echo(f"Figure: {figure}")
