"""Command-line interface: a thin Click layer over the library functions.

Every command parses its options and calls a function that is usable from
Python too. Heavy modules (torch, Lightning) are imported inside the commands
so that ``--help`` and light commands start fast. Known errors
(:class:`~wakemodel.errors.WakeModelError`) become one line on stderr and exit
code 2; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import logging
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

