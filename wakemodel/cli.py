"""Command-line interface: a thin Click layer over the library functions.

Every command parses its options and calls a function that is usable from
Python too. Heavy modules (torch, Lightning) are imported inside the commands
so that ``--help`` and light commands start fast. Known errors
(:class:`~wakemodel.errors.WakeModelError`) become one line on stderr and exit
code 2; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import click

from wakemodel import __version__
from wakemodel.calibration import DEFAULT_MIN_WAKE_SCORE
from wakemodel.config import DEMO_EPOCHS, DEMO_IMAGE_SIZE, MODEL_DEFAULTS
from wakemodel.devices import ACCELERATORS, available_cores
from wakemodel.download import API_URL
from wakemodel.errors import WakeModelError, first_line
from wakemodel.metrics import DEFAULT_GSD_M
from wakemodel.selftrain import ROUND_CHECKPOINTS, Reward, SelfTrainConfig
from wakemodel.tta import DEFAULT_TTA

ACCELERATOR_CHOICES = list(ACCELERATORS)


class _WakeGroup(click.Group):
    """A Click group that turns known errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (WakeModelError, OSError) as exc:
            if ctx.find_root().params.get("verbose"):
                raise
            click.echo(f"Error: {first_line(exc)}", err=True)
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


def _model_options(
    skip: Collection[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding the options shared by the commands that run a model.

    Args:
        skip: Names of options (``"--gsd"``, ``"--devices"``) a command does not take.
    """
    options = [
        click.option(
            "--accelerator",
            type=click.Choice(ACCELERATOR_CHOICES),
            default="auto",
            show_default=True,
            help="Device to run on.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=16,
            show_default=True,
            help="Chips per network call.",
        ),
        click.option(
            "--tta/--no-tta",
            default=DEFAULT_TTA,
            show_default=True,
            help="Combine predictions over the 8 flips/rotations of the input (median "
            "keypoints; 8x the network time, fewer large heading errors).",
        ),
        click.option(
            "--gsd",
            "gsd_m",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_GSD_M,
            show_default=True,
            help="Ground sampling distance in metres per pixel.",
        ),
        click.option(
            "--min-wake-score",
            type=click.FloatRange(0.0, 1.0),
            default=DEFAULT_MIN_WAKE_SCORE,
            show_default=True,
            help="Wake score (probability the chip holds a readable wake) from which a chip "
            "gets a heading; below it the chip is reported as 'no readable wake'.",
        ),
        click.option(
            "--devices",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Spread a .ckpt model over this many devices (GPUs, or CPU processes) "
            "through Lightning's predict loop; results keep the input order.",
        ),
    ]

    names = ("--accelerator", "--batch-size", "--tta", "--gsd", "--min-wake-score", "--devices")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name, option in reversed(list(zip(names, options, strict=True))):
            if name not in skip:
                command = option(command)
        return command

    return decorate


_prediction_options = _model_options()


@main.command("infer")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Write the results as JSON to this file ('-' for stdout, which replaces the table).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    help="Save each chip with its keypoints, wake axis and heading arrow: a .png file "
    "for one image, else a folder (one <name>_wake.png per image).",
)
@click.option(
    "--crs",
    help="CRS of chips georeferenced by a world file (.pgw/.wld) without a .prj "
    "beside them, e.g. EPSG:32631 (GeoTIFFs carry their own).",
)
@click.option(
    "--platforms",
    "platforms_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of platforms (lat, lon, optional name, id, mmsi): adds, for georeferenced chips, "
    "the nearest platform's distance, bearing, angle to the heading and the closest "
    "point of approach.",
)
@click.option(
    "--nearest",
    "nearest_count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Platforms listed per vessel (with --platforms).",
)
@click.option(
    "--within-km",
    type=click.FloatRange(min=0, min_open=True),
    help="Flag vessels closer than this to their nearest platform (km; needs --platforms).",
)
@_prediction_options
def infer_command(
    model: Path,
    images: tuple[Path, ...],
    json_path: Path | None,
    plot_path: Path | None,
    crs: str | None,
    platforms_csv: Path | None,
    nearest_count: int,
    within_km: float | None,
    accelerator: str,
    batch_size: int,
    tta: bool,
    gsd_m: float,
    min_wake_score: float,
    devices: int,
) -> None:
    """Find the wake in each IMAGE (files or folders) with MODEL (.ckpt, or .onnx from export).

    Prints, per chip, the vertex and wake ends in original-image pixels, the
    heading (compass bearing, north up) with its 1-sigma uncertainty, the wake
    score and the wake length in pixels and metres; a chip scoring under
    --min-wake-score is reported as "no readable wake" (the JSON keeps the raw
    values with "wake_found": false).
    For georeferenced chips (GeoTIFF, or a world file plus --crs or a .prj) it
    adds the vessel's latitude/longitude, its true heading, the wake length from
    the actual pixel size and, with --platforms, the nearest platforms and the
    closest point of approach; other chips get one line saying why not.
    Folders of thousands of chips are streamed batch by batch, with a progress
    bar on stderr when it is a terminal.
    """
    from wakemodel import infer

    paths = infer.find_images(images)
    infer.check_plot_path(plot_path, len(paths))
    several = len(paths) > 1

    with _ChipProgress(min_chips=batch_size) as progress:

        def skip(source: str, error: WakeModelError) -> None:
            progress.echo(f"Skipping {source}: {error}")

        report = infer.run(
            model,
            paths,
            batch_size=batch_size,
            tta=tta,
            gsd_m=gsd_m,
            accelerator=accelerator,
            crs=crs,
            platforms=platforms_csv,
            nearest_count=nearest_count,
            within_km=within_km,
            min_wake_score=min_wake_score,
            on_unreadable=skip if several else None,
            progress=progress,
            devices=devices,
        )
    for note in report.notes:
        click.echo(note, err=True)
    json_to_stdout = _write_json(json_path, report.to_dict())
    if not json_to_stdout:
        click.echo(report.format_table())
    if plot_path is not None:
        for saved in report.save_plots(plot_path, single_file=not several):
            click.echo(f"Saved {saved}", err=json_to_stdout)


def _write_json(json_path: Path | None, document: dict[str, Any]) -> bool:
    """Write ``document`` as indented JSON to ``json_path`` (atomically) or, for ``-``, stdout.

    The text is written piece by piece (``json.dump``), never held whole
    (``json.dumps`` of 5000 predictions holds ~29 MB of pieces at once).

    Returns:
        True when the JSON went to stdout (the table is then left out).
    """
    if json_path is None:
        return False
    import json
    import sys

    from wakemodel._io import atomic_path

    if str(json_path) == "-":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return True
    with atomic_path(json_path) as partial, partial.open("w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)
        file.write("\n")
    return False


def _stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (where progress bars go)."""
    import sys

    return sys.stderr.isatty()


class _ChipProgress:
    """A progress bar on stderr fed by ``progress(done, total)`` callbacks.

    It appears only when stderr is a terminal and there are more than
    ``min_chips`` chips (more than one batch), so stdout (``--json -``), logs and
    redirected stderr stay free of it; it is finished on leaving the ``with``.

    Args:
        min_chips: Show the bar only above this many chips.
        label: Text before the bar.
    """

    def __init__(self, min_chips: int, label: str = "Predicting") -> None:
        self.min_chips = min_chips
        self.label = label
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if total <= self.min_chips or not _stderr_is_terminal():
                return
            import sys

            self._bar = click.progressbar(
                length=total, label=self.label, show_pos=True, file=sys.stderr
            )
        self._bar.update(done - self._bar.pos)

    def echo(self, message: str) -> None:
        """Print one line on stderr above the bar (on its own line when a bar is shown)."""
        click.echo(("\r\033[K" if self._bar is not None else "") + message, err=True)

    def __enter__(self) -> _ChipProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish the bar (if shown); a later call starts a new one."""
        if self._bar is not None:
            self._bar.render_finish()
            self._bar = None


def _prediction_table(predictions: list[Any]) -> str:
    """Format predictions (``wakemodel.infer.Prediction``) as a plain-text table."""
    from wakemodel.infer import format_table

    return format_table(predictions)


@main.command("evaluate")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Write the summary and per-chip errors as JSON ('-' for stdout).",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write predictions.png, errors.png, calibration.png and (with a training log) "
    "history.png here.",
)
@click.option(
    "--history",
    "history_log",
    type=click.Path(path_type=Path),
    help="Training run folder or metrics.csv for history.png; default: a metrics.csv "
    "in MODEL's folder or its parent.",
)
@_prediction_options
def evaluate_command(
    model: Path,
    data_dir: Path,
    json_path: Path | None,
    plots_dir: Path | None,
    history_log: Path | None,
    **prediction_options: Any,
) -> None:
    """Measure MODEL on the annotated chips of DATA_DIR (imgs/ + annotations/).

    Prints median, mean and 90th percentile of the vertex error (pixels, metres,
    fraction of wake length), heading error (degrees) and PCK@5%, the share
    of chips within the published bounds (vertex < 10% of wake length, heading
    < 10 degrees), and how far the predicted uncertainty and the wake score can
    be trusted (Spearman, confident-chip p90, interval coverage, wake recall,
    rejection of chips without a wake, ROC AUC). Chips are streamed batch by
    batch, with a progress bar on stderr when it is a terminal.
    """
    from wakemodel.evaluate import evaluate, find_training_log

    with _ChipProgress(min_chips=prediction_options["batch_size"]) as progress:
        report = evaluate(model, data_dir, progress=progress, **prediction_options)
    json_to_stdout = _write_json(json_path, report.to_dict())
    if not json_to_stdout:
        click.echo(report.format_table())
    if plots_dir is not None:
        from wakemodel.plots import plot_training_history

        saved = [
            report.plot_predictions(plots_dir / "predictions.png"),
            report.plot_errors(plots_dir / "errors.png"),
            report.plot_calibration(plots_dir / "calibration.png"),
        ]
        run_log = history_log or find_training_log(model)
        if run_log is not None:
            saved.append(plot_training_history(run_log, plots_dir / "history.png"))
        for path in saved:
            click.echo(f"Saved {path}", err=json_to_stdout)


@plot.command("history")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="curves.png",
    show_default=True,
    help="Output image file.",
)
def plot_history_command(run: Path, out: Path) -> None:
    """Plot train/val loss and validation metrics per epoch of a training RUN.

    RUN is a run folder (searched for Lightning's metrics.csv) or the CSV itself.
    """
    from wakemodel.plots import plot_training_history

    click.echo(f"Saved {plot_training_history(run, out)}")


@plot.command("predictions")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="grid.png",
    show_default=True,
    help="Output image file.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Number of chips shown (the first ones by name).",
)
@click.option(
    "--worst",
    is_flag=True,
    help="Show the COUNT chips with the largest heading errors (evaluates every chip).",
)
@_prediction_options
def plot_predictions_command(
    model: Path,
    data_dir: Path,
    out: Path,
    count: int,
    worst: bool,
    **prediction_options: Any,
) -> None:
    """Plot a grid of DATA_DIR chips with ground truth and MODEL's predictions."""
    from wakemodel.evaluate import evaluate

    report = evaluate(model, data_dir, limit=None if worst else count, **prediction_options)
    click.echo(f"Saved {report.plot_predictions(out, count=count, worst=worst)}")


@plot.command("errors")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="errors.png",
    show_default=True,
    help="Output image file.",
)
@_prediction_options
def plot_errors_command(
    model: Path,
    data_dir: Path,
    out: Path,
    **prediction_options: Any,
) -> None:
    """Plot MODEL's vertex and heading error distributions on DATA_DIR, bounds marked."""
    from wakemodel.evaluate import evaluate

    report = evaluate(model, data_dir, **prediction_options)
    click.echo(f"Saved {report.plot_errors(out)}")


@plot.command("calibration")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="calibration.png",
    show_default=True,
    help="Output image file.",
)
@_prediction_options
def plot_calibration_command(
    model: Path,
    data_dir: Path,
    out: Path,
    **prediction_options: Any,
) -> None:
    """Plot MODEL's actual heading error against its predicted uncertainty on DATA_DIR.

    Also the observed against the promised coverage of its intervals and, when
    DATA_DIR holds chips without a wake (empty tooltips), the wake-score
    distributions of wakes and non-wakes with the --min-wake-score threshold.
    """
    from wakemodel.evaluate import evaluate

    report = evaluate(model, data_dir, **prediction_options)
    click.echo(report.format_calibration())
    click.echo(f"Saved {report.plot_calibration(out)}")


def _click_type(spec: Any, hint: Any) -> Any:
    """The Click parameter type of a :class:`wakemodel.config.TrainConfig` field."""
    from wakemodel.config import field_choices, union_members

    choices = field_choices(spec, hint)
    if choices is not None:
        return click.Choice(list(choices))
    kinds = union_members(hint)
    bounds = {
        "min": spec.metadata.get("min"),
        "min_open": bool(spec.metadata.get("min_open")),
        "max": spec.metadata.get("max"),
        "max_open": bool(spec.metadata.get("max_open")),
    }
    bounded = bounds["min"] is not None or bounds["max"] is not None
    if Path in kinds:
        return click.Path(path_type=Path)
    if int in kinds:
        return click.IntRange(**bounds) if bounded else int
    if float in kinds:
        return click.FloatRange(**bounds) if bounded else float
    return str


def _train_options(
    command: Callable[..., Any], only: Collection[str] | None = None
) -> Callable[..., Any]:
    """Add one option per user-facing ``TrainConfig`` field to ``command``, in field order.

    Name, default, help, choices and range all come from the field (see
    :mod:`wakemodel.config`): ``batch_size`` becomes ``--batch-size``, booleans
    become ``--x`` flags (or ``--x/--no-x`` where negatable). ``only`` limits
    them to these field names.
    """
    from wakemodel.config import cli_fields, option_name

    for spec, hint in reversed(cli_fields()):
        if only is not None and spec.name not in only:
            continue
        meta, name = spec.metadata, option_name(spec)
        settings: dict[str, Any] = {"help": meta["help"]}
        if meta["negatable"]:
            declaration = f"{name}/--no-{name.removeprefix('--')}"
            settings.update(default=spec.default, show_default=True)
        elif meta["flag"]:
            declaration = name
            settings.update(is_flag=True, default=spec.default)
        else:
            declaration = name
            settings.update(
                type=_click_type(spec, hint),
                default=spec.default,
                show_default=meta["default_text"] or spec.default is not None,
            )
        command = click.option(declaration, spec.name, **settings)(command)
    return command


@main.command("train")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run with the settings of this config.yaml (every run folder has one); options "
    "given on the command line override it.",
)
@_train_options
def train_command(config_file: Path | None, **options: Any) -> None:
    """Train the wake keypoint model into a run folder RUN_DIR/RUN_NAME/.

    The run folder holds config.yaml (the settings, for --config), metrics.csv
    and checkpoints/ (the best checkpoint and last.ckpt, for --resume). Prints
    the device at the start and, at the end, the best epoch, its validation
    metrics and the paths. With several processes (DDP) only the first prints.
    """
    from wakemodel.train import train

    config = _train_config(click.get_current_context(), config_file, options)
    result = train(config)
    if result.is_global_zero:
        click.echo(_train_summary(result))


def _train_config(ctx: click.Context, config_file: Path | None, options: dict[str, Any]) -> Any:
    """The ``TrainConfig`` of a ``train`` call: ``--config``'s values, then the options given.

    Without ``--config`` the options (with their defaults) make the config;
    with it, only options given explicitly (command line or environment)
    override the file's values.
    """
    import dataclasses

    from click.core import ParameterSource

    from wakemodel.config import TrainConfig, load_config

    if config_file is None:
        return TrainConfig(**options)
    defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    given = {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) not in defaults
    }
    return dataclasses.replace(load_config(config_file), **given)


def _train_summary(result: Any) -> str:
    """Format a ``wakemodel.train.TrainResult``: best metrics, run folder, checkpoints."""
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
    lines = [capture.get().rstrip(), f"Device: {result.device.description}"]
    if result.run_dir is None:
        lines.append("Run folder: none written (--fast-dev-run)")
    else:
        lines.append(f"Run folder: {result.run_dir}")
        if result.config_path is not None:
            lines.append(
                f"  Config: {result.config_path} (rerun: train --config {result.config_path})"
            )
        if result.metrics_path is not None:
            lines.append(f"  Logs: {result.metrics_path}")
        else:
            lines.append("  Logs: none written (--logger none)")
        if result.checkpoint_dir is not None:
            lines.append(f"  Checkpoints: {result.checkpoint_dir}")
    lines.append(f"Best checkpoint: {result.best_checkpoint or 'none written'}")
    if result.last_checkpoint is not None:
        lines.append(
            f"Last checkpoint: {result.last_checkpoint} "
            f"(continue with --resume {result.last_checkpoint})"
        )
    return "\n".join(lines)


SELFTRAIN_TRAIN_FIELDS = (
    "epochs",
    "batch_size",
    "image_size",
    "lr",
    "heading_weight",
    "visibility_weight",
    "wake_weight",
    "seed",
    "accelerator",
    "precision",
    "workers",
    "pretrained",
    "weights_path",
    "max_time",
)
"""The ``train`` options that ``selftrain`` passes to every round's training."""


@main.command("selftrain")
@click.option(
    "--labeled",
    "labeled_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Labelled dataset (imgs/ and annotations/); its validation split chooses the round "
    "unless --val is given.",
)
@click.option(
    "--val",
    "val_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Labelled dataset that validates every round instead of a split of --labeled "
    "(a few labelled chips of the unlabelled imagery); all of --labeled then trains.",
)
@click.option(
    "--unlabeled",
    "unlabeled_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder of unlabelled chip images (PNG or TIFF), no annotations.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Self-training rounds after round 0 (supervised on the labelled chips).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/selftrain"),
    show_default=True,
    help="Output folder: round_K/ with the checkpoint, pseudo-labels and summary; "
    "rerunning skips finished rounds.",
)
@click.option(
    "--max-vertex-spread",
    type=click.FloatRange(min=0, min_open=True),
    default=Reward.max_vertex_spread,
    show_default=True,
    help="Keep a chip only if its 8 views' vertices spread (RMS) at most this fraction of "
    "the chip diagonal.",
)
@click.option(
    "--max-heading-spread",
    "max_heading_spread_deg",
    type=click.FloatRange(min=0, min_open=True),
    default=Reward.max_heading_spread_deg,
    show_default=True,
    help="Keep a chip only if its views' headings spread (RMS) at most this many degrees.",
)
@click.option(
    "--min-wake-score",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_MIN_WAKE_SCORE,
    show_default=True,
    help="Keep a chip only if its views' mean wake score reaches this.",
)
@click.option(
    "--min-kept-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=Reward.min_kept_fraction,
    show_default=True,
    help="Keep at least this share of the unlabelled chips: when fewer pass, both spread "
    "limits are scaled up until the most agreeing share does (0: fixed limits).",
)
@click.option(
    "--evidence-weight",
    type=click.FloatRange(min=0.0),
    default=Reward.evidence_weight,
    show_default=True,
    help="Also rank the chips that fill --min-kept-fraction by the image's line contrast "
    "behind the predicted vertex, with this weight beside the views' agreement (0: agreement "
    "alone).",
)
@click.option(
    "--round-checkpoint",
    type=click.Choice(ROUND_CHECKPOINTS),
    default=SelfTrainConfig.round_checkpoint,
    show_default=True,
    help="A round's model: its training's checkpoint with the lowest validation loss (best) "
    "or its last, annealed epoch (last).",
)
@click.option(
    "--labeled-repeats",
    type=click.IntRange(min=1),
    default=SelfTrainConfig.labeled_repeats,
    show_default=True,
    help="Times each labelled training chip appears beside the pseudo-labels (its weight).",
)
@functools.partial(_train_options, only=SELFTRAIN_TRAIN_FIELDS)
def selftrain_command(
    labeled_dir: Path,
    unlabeled_dir: Path,
    val_dir: Path | None,
    rounds: int,
    out_dir: Path,
    max_vertex_spread: float,
    max_heading_spread_deg: float,
    min_wake_score: float,
    min_kept_fraction: float,
    evidence_weight: float,
    round_checkpoint: str,
    labeled_repeats: int,
    **train_options: Any,
) -> None:
    """Self-train on unlabelled chips (ReST-EM with a consistency reward).

    Round 0 trains on the labelled chips. Each further round pseudo-labels the
    unlabelled chips with the previous round's model under 8 flips/rotations,
    keeps the chips whose views agree, and trains again from the same starting
    weights on the labelled plus kept chips. Prints a table of every round.
    """
    from wakemodel.config import TrainConfig
    from wakemodel.selftrain import format_rounds, selftrain

    result = selftrain(
        SelfTrainConfig(
            labeled_dir=labeled_dir,
            unlabeled_dir=unlabeled_dir,
            out_dir=out_dir,
            rounds=rounds,
            train=TrainConfig(**train_options),
            reward=Reward(
                max_vertex_spread,
                max_heading_spread_deg,
                min_wake_score,
                min_kept_fraction,
                evidence_weight,
            ),
            labeled_repeats=labeled_repeats,
            val_dir=val_dir,
            round_checkpoint=round_checkpoint,
        )
    )
    click.echo(format_rounds(result))
    click.echo(f"Best round: {result.best_round}; checkpoint: {result.best_checkpoint}")
    click.echo(f"Pseudo-labels: {out_dir}/round_K/pseudo (python cli.py plot dataset DIR)")


@main.command("synth")
@click.argument("out_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--count", type=click.IntRange(min=1), default=600, show_default=True, help="Number of chips."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed (same seed -> byte-identical files).",
)
@click.option(
    "--min-size",
    type=click.IntRange(min=32),
    default=200,
    show_default=True,
    help="Smallest chip side in pixels.",
)
@click.option(
    "--max-size",
    type=click.IntRange(min=32),
    default=900,
    show_default=True,
    help="Largest chip side in pixels.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    show_default="the available CPU cores",
    help="Parallel processes (the files do not depend on it).",
)
@click.option(
    "--geotiff",
    is_flag=True,
    help="Write georeferenced GeoTIFF chips (imgs/*.tif: UTM 31N/32N, 10 m pixels, "
    "North Sea) instead of PNGs; same pixels and annotations.",
)
@click.option(
    "--no-wake-fraction",
    type=float,
    default=0.0,
    show_default=True,
    help="Share (0 to 1) of chips without a wake (open sea, clouds, glint, a lone vessel), "
    'annotated {"tooltips": []}; the wake chips stay the same.',
)
@click.option(
    "--style",
    type=click.Choice(["default", "shifted"]),
    default="default",
    show_default=True,
    help="Chip appearance: default, or shifted (heavier grain, broad sea patches, stronger "
    "glint, harder stretch, wider wakes; closer to a real Sentinel-2 B8 chip). The "
    "annotations are the same.",
)
@click.option(
    "--scene",
    "scene_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Instead of chips, write a whole georeferenced scene: an L2A-like B08 GeoTIFF "
    "(uint16, 10000 x reflectance + 1000, UTM North Sea, 10 m) with --wakes wakes and "
    "clutter, plus the truth beside it (SCENE.csv, SCENE.geojson).",
)
@click.option(
    "--wakes",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Wakes in the --scene.",
)
@click.option(
    "--size",
    type=click.IntRange(min=256),
    default=10980,
    show_default=True,
    help="Side of the --scene in pixels (a Sentinel-2 tile: 10980).",
)
def synth_command(
    out_dir: Path | None,
    count: int,
    seed: int,
    min_size: int,
    max_size: int,
    workers: int | None,
    geotiff: bool,
    no_wake_fraction: float,
    style: str,
    scene_path: Path | None,
    wakes: int,
    size: int,
) -> None:
    """Write COUNT synthetic Sentinel-2 wake chips to OUT_DIR in the dataset's layout.

    With --scene, write one whole scene with wakes at known places instead.
    """
    from wakemodel.synthetic import generate_dataset, no_wake_indices

    if scene_path is not None:
        if out_dir is not None:
            raise click.UsageError("Give either OUT_DIR (chips) or --scene FILE.tif, not both.")
        _write_scene(scene_path, wakes, size, seed)
        return
    if out_dir is None:
        raise click.UsageError("Give OUT_DIR (a folder for chips) or --scene FILE.tif.")
    if workers is None:
        workers = available_cores()
    root = generate_dataset(
        out_dir,
        count,
        seed,
        min_size=min_size,
        max_size=max_size,
        workers=workers,
        geotiff=geotiff,
        no_wake_fraction=no_wake_fraction,
        style=style,
    )
    no_wake = len(no_wake_indices(count, seed, no_wake_fraction))
    without = f" ({no_wake} without a wake)" if no_wake_fraction > 0 else ""
    click.echo(
        f"Wrote {count} chips{without} to {root} (imgs/{'*.tif' if geotiff else ''}, annotations/)."
    )
    click.echo(f"Next: python cli.py plot dataset {root} --out dataset.png")


def _write_scene(scene_path: Path, wakes: int, size: int, seed: int) -> None:
    """``synth --scene``: write the scene with a progress bar and say what was written."""
    from wakemodel.scene_synth import write_synthetic_scene

    with _ChipProgress(min_chips=0, label="Writing rows") as progress:
        truth = write_synthetic_scene(scene_path, wakes, size=size, seed=seed, progress=progress)
    click.echo(
        f"Wrote {scene_path} ({size}x{size} px, {len(truth)} wakes) and its truth "
        f"{scene_path.with_suffix('.csv')}, {scene_path.with_suffix('.geojson')}."
    )
    click.echo(f"Next: python cli.py scan MODEL {scene_path} --out vessels.geojson --plot scan.png")


@main.command("scan")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("scene", type=click.Path(path_type=Path))
@click.option(
    "--vessels",
    "vessels_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of vessel positions: lat,lon (e.g. AIS) or scene pixels x,y; optional id, "
    "name, mmsi. Without it, candidates come from the built-in CFAR detector.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file [default: vessels.geojson, or vessels.csv/.parquet per --format].",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["geojson", "csv", "parquet"]),
    help="geojson (Points and wake LineStrings, WGS 84, RFC 7946), csv (one row per "
    "vessel) or parquet (GeoParquet; needs geopandas) [default: from --out's suffix, "
    "else geojson].",
)
@click.option(
    "--band",
    default="B08",
    show_default=True,
    help="Band read from a .SAFE folder (B08, the near-infrared band the training chips "
    "come from).",
)
@click.option(
    "--chip-m",
    type=click.FloatRange(min=0, min_open=True),
    help="Window side in metres [default: the training chips' median extent, stored in the "
    "model file].",
)
@click.option(
    "--platforms",
    "platforms_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of platforms (lat, lon, optional name, id): adds the nearest platform, its "
    "distance and the closest point of approach.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save a quick-look PNG of the scene with the vessels and their headings.",
)
@click.option(
    "--cfar-sigma",
    type=click.FloatRange(min=0, min_open=True),
    default=6.0,
    show_default=True,
    help="Detector threshold: standard deviations above the local sea (without --vessels).",
)
@click.option(
    "--second-look/--no-second-look",
    default=True,
    show_default=True,
    help="Look again at every readable wake through a window centred on the wake (the whole "
    "wake in view, as in a training chip); keep that answer unless it is less certain.",
)
@click.option(
    "--tta/--no-tta",
    default=True,
    show_default=True,
    help="Combine every look over the 8 flips/rotations of the window (about 4x the model "
    "time; fewer reversed headings, sharper uncertainty).",
)
@_model_options(skip=("--gsd", "--devices", "--tta"))
def scan_command(
    model: Path,
    scene: Path,
    vessels_csv: Path | None,
    out: Path | None,
    out_format: str | None,
    band: str,
    chip_m: float | None,
    platforms_csv: Path | None,
    plot_path: Path | None,
    cfar_sigma: float,
    second_look: bool,
    tta: bool,
    accelerator: str,
    batch_size: int,
    min_wake_score: float,
) -> None:
    """Find the vessels of a whole SCENE with MODEL (.ckpt or .onnx): position, true heading.

    SCENE is a GeoTIFF/COG band, a JPEG2000 band (*_B08_10m.jp2) or a Sentinel-2
    .SAFE folder (L1C or L2A; the band is picked by --band, reflectance offsets
    and nodata are handled). Each vessel (from --vessels, or the detector) gets
    a window read around it, the model's wake keypoints, the vessel's latitude
    and longitude at the wake vertex, its true heading (grid convergence
    corrected) with a 1-sigma uncertainty, the wake score and the wake length in
    metres. Vessels outside the scene are reported and skipped.
    """
    from wakemodel.detect import CfarSettings
    from wakemodel.scan import scan, scan_format, write_scan

    fmt = scan_format(out, out_format)
    out_path = out or Path(f"vessels.{fmt}")
    stages = {"detect": "Detecting", "predict": "Predicting"}
    bars: dict[str, _ChipProgress] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = _ChipProgress(min_chips=1, label=stages[stage])
        bar = bars[stage]
        bar(done, total)
        if done >= total:
            bar.close()

    result = scan(
        model,
        scene,
        vessels=vessels_csv,
        band=band,
        chip_m=chip_m,
        batch_size=batch_size,
        tta=tta,
        accelerator=accelerator,
        min_wake_score=min_wake_score,
        platforms=platforms_csv,
        cfar=CfarSettings(threshold_sigma=cfar_sigma),
        second_look=second_look,
        progress=progress,
    )
    for bar in bars.values():
        bar.close()
    write_scan(result, out_path, fmt)
    click.echo(result.summary())
    click.echo(f"Wrote {out_path} ({fmt}).")
    if plot_path is not None:
        from wakemodel.plots import plot_scan

        click.echo(f"Saved {plot_scan(result, plot_path)}")


@main.command("download")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/ShipWakes"),
    show_default=True,
    help="Dataset folder to create (imgs/ and annotations/).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Network timeout per request in seconds.",
)
@click.option(
    "--api-url",
    default=API_URL,
    show_default=True,
    help="Zenodo API address of the record (a mirror or a test server).",
)
def download_command(dest: Path, timeout_s: float, api_url: str) -> None:
    """Download the ship-wake dataset from Zenodo, verify checksums and unpack it."""
    from wakemodel.download import download_dataset

    root = download_dataset(dest, api_url=api_url, timeout_s=timeout_s)
    click.echo(f"Dataset ready in {root}.")
    click.echo(
        f"Next: python cli.py plot dataset {root} --out dataset.png, "
        f"then python cli.py train --data {root}"
    )


@plot.command("dataset")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="grid.png",
    show_default=True,
    help="Output image file.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Number of chips shown (the first ones by name).",
)
def plot_dataset_command(data_dir: Path, out: Path, count: int) -> None:
    """Plot a grid of DATA_DIR chips with their annotated keypoints."""
    from wakemodel.plots import plot_dataset_grid

    click.echo(f"Saved {plot_dataset_grid(data_dir, out, count=count)}")


@main.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="Export format.",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Quantise to 8 bits (ONNX Runtime dynamic quantisation; about 3x smaller).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="model.onnx",
    show_default=True,
    help="Output .onnx file.",
)
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
@click.option(
    "--lat",
    "vessel_lat",
    type=click.FloatRange(-90, 90),
    help="Vessel latitude in degrees (with --lon).",
)
@click.option("--lon", "vessel_lon", type=float, help="Vessel longitude in degrees (with --lat).")
@click.option(
    "--vessels",
    "vessels_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of vessels (lat, lon, optional name, id, mmsi) instead of --lat/--lon.",
)
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Nearest platforms listed per vessel.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def nearest_command(
    platforms_csv: Path,
    vessel_lat: float | None,
    vessel_lon: float | None,
    vessels_csv: Path | None,
    k: int,
    as_json: bool,
) -> None:
    """Print the K platforms of PLATFORMS_CSV nearest to each vessel (great-circle km).

    PLATFORMS_CSV has a header with lat (or latitude) and lon (or lng, long, longitude) in
    degrees, any case, and optionally name, id and mmsi.
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
    rows = [
        f"{'vessel':<16} {'lat':>9} {'lon':>10} {'rank':>4}  {'platform':<16} {'distance km':>12}"
    ]
    for record in records:
        for match in record["nearest"]:
            rows.append(
                f"{record['vessel']:<16} {record['lat']:>9.4f} {record['lon']:>10.4f} "
                f"{match['rank']:>4}  {match['name']:<16} {match['distance_km']:>12.3f}"
            )
    click.echo("\n".join(rows))


@main.command("demo")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/synthetic"),
    show_default=True,
    help="Synthetic training set (generated when absent; held-out chips go to DATA-holdout).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Folder for evaluation.json, the figures and the training run folder "
    "train/ (config.yaml, metrics.csv, checkpoints/).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=DEMO_EPOCHS,
    show_default=True,
    help="Training epochs.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=MODEL_DEFAULTS.lr,
    show_default=True,
    help="Peak AdamW learning rate.",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=32),
    default=DEMO_IMAGE_SIZE,
    show_default=True,
    help="Network input side in pixels.",
)
@click.option(
    "--count",
    type=click.IntRange(min=10),
    default=600,
    show_default=True,
    help="Synthetic training chips to generate when the set is absent.",
)
@click.option(
    "--accelerator",
    type=click.Choice(ACCELERATOR_CHOICES),
    default="cpu",
    show_default=True,
    help="Device for training and inference.",
)
def demo_command(
    data_dir: Path,
    out_dir: Path,
    epochs: int,
    lr: float,
    image_size: int,
    count: int,
    accelerator: str,
) -> None:
    """Run the main job: synthetic data, short training, evaluation, inference, figures."""
    from wakemodel.demo import run_demo

    result = run_demo(
        data_dir,
        out_dir,
        count=count,
        epochs=epochs,
        lr=lr,
        image_size=image_size,
        accelerator=accelerator,
    )
    click.echo(_train_summary(result.training))
    click.echo(result.evaluation.format_table())
    click.echo(_prediction_table([result.prediction]))
    click.echo(f"Evaluation: {result.report_path}")
    for figure in result.figures:
        click.echo(f"Figure: {figure}")
