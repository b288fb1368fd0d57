"""Download the Sentinel-2 ship-wake dataset (Del Prete et al., Zenodo record 7947694).

The record's file list comes from the Zenodo REST API
(``GET https://zenodo.org/api/records/7947694`` -> ``{"files": [{"key", "size",
"checksum": "md5:...", "links": {"self": url}}]}``). Every file is downloaded
with a progress bar, checked against its published checksum and, if it is a
zip or tar archive, extracted. The folder that holds ``imgs/`` and
``annotations/`` is then moved to the destination in one rename, so the
destination is either complete or absent. Only the standard library's
``urllib`` is used for the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wakemodel.errors import WakeModelError, first_line

logger = logging.getLogger(__name__)

RECORD_ID = "7947694"
RECORD_URL = f"https://zenodo.org/records/{RECORD_ID}"
"""The record's landing page, for a manual download."""
API_URL = f"https://zenodo.org/api/records/{RECORD_ID}"
"""The record's REST API address (JSON with the file list)."""

_CHUNK_BYTES = 1 << 20


def _manual_hint(dest: Path) -> str:
    return (
        f"download it by hand from {RECORD_URL} and unpack it so that {dest}/imgs and "
        f"{dest}/annotations exist"
    )


def _reason(error: BaseException) -> str:
    """One-line reason of a network error."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if not isinstance(reason, BaseException):
            reason = WakeModelError(str(reason))
        return first_line(reason) if str(reason).strip() else "unreachable"
    return first_line(error)


def _open(url: str, timeout_s: float, dest: Path) -> Any:
    """Open ``url`` for reading, turning network failures into one-line errors."""
    request = urllib.request.Request(url, headers={"User-Agent": "wakemodel"})
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except (urllib.error.URLError, OSError) as error:
        raise WakeModelError(
            f"Cannot reach {url} ({_reason(error)}); {_manual_hint(dest)}."
        ) from error


def fetch_file_list(api_url: str, timeout_s: float, dest: Path) -> list[dict[str, Any]]:
    """Fetch and validate the record's file list.

    Args:
        api_url: The record's API address (see :data:`API_URL`).
        timeout_s: Network timeout per request (seconds).
        dest: The dataset destination (named in error messages).

    Returns:
        One dict per file with ``key`` (file name), ``size`` (bytes),
        ``checksum`` (``"md5:<hex>"``) and ``url``.

    Raises:
        WakeModelError: The API is unreachable or its answer is malformed.
    """
    with _open(api_url, timeout_s, dest) as response:
        try:
            record = json.loads(response.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError) as error:
            raise WakeModelError(
                f"Malformed answer from {api_url} ({_reason(error)}); {_manual_hint(dest)}."
            ) from error
    entries = record.get("files") if isinstance(record, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise WakeModelError(f"No file list in the answer from {api_url}; {_manual_hint(dest)}.")
    files = []
    for entry in entries:
        try:
            key, url = str(entry["key"]), str(entry["links"]["self"])
            checksum = str(entry["checksum"])
            size = int(entry.get("size", 0))
        except (KeyError, TypeError, ValueError) as error:
            raise WakeModelError(
                f"Malformed file entry in {api_url}: {entry!r:.80}; {_manual_hint(dest)}."
            ) from error
        files.append({"key": key, "size": size, "checksum": checksum, "url": url})
    return files


def _download_file(
    entry: Mapping[str, Any], folder: Path, timeout_s: float, dest: Path, progress: Any
) -> Path:
    """Download one file into ``folder`` and verify its checksum; return its path."""
    algorithm, _, expected = str(entry["checksum"]).partition(":")
    try:
        digest = hashlib.new(algorithm.lower())
    except ValueError as error:
        raise WakeModelError(
            f"Unknown checksum type {entry['checksum']!r} for {entry['key']}; {_manual_hint(dest)}."
        ) from error
    target = folder / Path(str(entry["key"])).name
    task = progress.add_task(target.name, total=entry["size"] or None)
    with _open(entry["url"], timeout_s, dest) as response, target.open("wb") as out:
        try:
            while chunk := response.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                progress.advance(task, len(chunk))
        except OSError as error:
            raise WakeModelError(
                f"Download of {entry['url']} failed ({_reason(error)}); {_manual_hint(dest)}."
            ) from error
    if digest.hexdigest() != expected.lower():
        raise WakeModelError(
            f"Checksum mismatch for {target.name} from {entry['url']}: expected {algorithm} "
            f"{expected}, got {digest.hexdigest()}; run the download again or "
            f"{_manual_hint(dest)}."
        )
    return target


def _extract(archive: Path, folder: Path) -> None:
    """Extract a zip or tar archive into ``folder``; copy any other file there as is."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(folder)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            bundle.extractall(folder, filter="data")
    else:
        shutil.copy2(archive, folder / archive.name)


def _find_dataset_root(folder: Path) -> Path | None:
    """The shallowest folder in ``folder`` (itself included) with ``imgs/`` and ``annotations/``."""
    candidates = [folder, *sorted(path for path in folder.rglob("*") if path.is_dir())]
    found = [
        path for path in candidates if (path / "imgs").is_dir() and (path / "annotations").is_dir()
    ]
    return min(found, key=lambda path: len(path.parts)) if found else None


def download_dataset(
    dest: str | os.PathLike[str] = Path("data/ShipWakes"),
    *,
    api_url: str = API_URL,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download, verify and unpack the ship-wake dataset into ``dest``.

    Args:
        dest: Destination folder; it will hold ``imgs/`` and ``annotations/``.
            If it already does, nothing is downloaded.
        api_url: The record's API address (tests point it at a local server).
        timeout_s: Network timeout per request (seconds).
        progress: Show a progress bar on stderr.

    Returns:
        ``dest``.

    Raises:
        WakeModelError: ``dest`` is a non-empty folder without the dataset, the
            network is unreachable, a checksum does not match, or no downloaded
            archive holds ``imgs/`` and ``annotations/``. Nothing is left behind.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    dest = Path(dest)
    if _find_dataset_root(dest) == dest:
        logger.info("The dataset is already in %s; nothing to download.", dest)
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise WakeModelError(
            f"Destination {dest} exists and is not an empty folder; remove it or choose "
            "another --dest."
        )
    files = fetch_file_list(api_url, timeout_s, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        downloads, extracted = staging / "files", staging / "extracted"
        downloads.mkdir()
        extracted.mkdir()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            paths = [_download_file(entry, downloads, timeout_s, dest, bar) for entry in files]
        for path in paths:
            _extract(path, extracted)
        root = _find_dataset_root(extracted)
        if root is None:
            raise WakeModelError(
                f"No folder with imgs/ and annotations/ in the files of {api_url}; "
                f"{_manual_hint(dest)}."
            )
        if dest.exists():
            dest.rmdir()
        root.chmod(0o755)
        os.replace(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Downloaded %d file(s) into %s", len(files), dest)
    return dest
