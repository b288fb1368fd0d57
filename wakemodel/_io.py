"""File output: atomic writes (nothing half-written at the final path) and JSON numbers."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Args:
        path: Final destination of the file. Its parent folder is created.
        suffix: Suffix of the temporary file (defaults to that of ``path``, so
            writers that pick a format by extension, such as matplotlib, work).

    Yields:
        A temporary path in the same folder to write to. On an exception it is
        removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.",
        suffix=final.suffix if suffix is None else suffix,
        dir=final.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_float(value: float, digits: int | None = None) -> float | None:
    """A plain float for JSON, rounded to ``digits`` when given; NaN and inf become None."""
    value = float(value)
    if not math.isfinite(value):
        return None
    return value if digits is None else round(value, digits)
