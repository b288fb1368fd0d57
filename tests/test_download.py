import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from wakemodel.cli import main
from wakemodel.download import RECORD_URL, download_dataset
from wakemodel.errors import WakeModelError

MEMBERS = {
    "ShipWakes/imgs/a.png": b"\x89PNG fake",
    "ShipWakes/annotations/a.json": b'{"tooltips": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}',
}


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, payload in MEMBERS.items():
            bundle.writestr(name, payload)
    return buffer.getvalue()


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, payload in MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            bundle.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


class FakeZenodo:
    """A loopback HTTP server serving one record and its archive."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = routes.get(self.path)
                if payload is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api_url = f"{self.base}/api/records/7947694"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, name: str, archive: bytes, checksum: str | None = None) -> None:
        self.routes[f"/files/{name}"] = archive
        record = {
            "files": [
                {
                    "key": name,
                    "size": len(archive),
                    "checksum": checksum or f"md5:{hashlib.md5(archive).hexdigest()}",
                    "links": {"self": f"{self.base}/files/{name}"},
                }
            ]
        }
        self.routes["/api/records/7947694"] = json.dumps(record).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def zenodo() -> Iterator[FakeZenodo]:
    server = FakeZenodo()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("name", "archive"), [("ShipWakes.zip", _zip_bytes()), ("ShipWakes.tar.gz", _tar_bytes())]
)
def test_download_extracts_layout(
    zenodo: FakeZenodo, tmp_path: Path, name: str, archive: bytes
) -> None:
    zenodo.publish(name, archive)
    dest = tmp_path / "data" / "ShipWakes"
    assert download_dataset(dest, api_url=zenodo.api_url, timeout_s=5, progress=False) == dest
    assert (dest / "imgs" / "a.png").read_bytes() == MEMBERS["ShipWakes/imgs/a.png"]
    assert json.loads((dest / "annotations" / "a.json").read_text())["tooltips"][0] == {
        "x": 1,
        "y": 2,
    }
    assert sorted(path.name for path in dest.parent.iterdir()) == ["ShipWakes"]
    # A second call finds the dataset and downloads nothing.
    zenodo.routes.clear()
    assert download_dataset(dest, api_url=zenodo.api_url, timeout_s=5, progress=False) == dest


def test_checksum_mismatch_leaves_nothing(zenodo: FakeZenodo, tmp_path: Path) -> None:
    zenodo.publish("ShipWakes.zip", _zip_bytes(), checksum="md5:" + "0" * 32)
    dest = tmp_path / "ShipWakes"
    with pytest.raises(WakeModelError, match=r"Checksum mismatch for ShipWakes\.zip") as caught:
        download_dataset(dest, api_url=zenodo.api_url, timeout_s=5, progress=False)
    assert "\n" not in str(caught.value)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_archive_without_layout_is_an_error(zenodo: FakeZenodo, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("readme.txt", "no images")
    zenodo.publish("other.zip", buffer.getvalue())
    with pytest.raises(WakeModelError, match="imgs/ and annotations/"):
        download_dataset(
            tmp_path / "ShipWakes", api_url=zenodo.api_url, timeout_s=5, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/records/7947694"


def test_offline_gives_one_line_with_record_url(tmp_path: Path) -> None:
    with pytest.raises(WakeModelError) as caught:
        download_dataset(
            tmp_path / "ShipWakes", api_url=_closed_port_url(), timeout_s=2, progress=False
        )
    message = str(caught.value)
    assert RECORD_URL in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_non_empty_destination_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "ShipWakes"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(WakeModelError, match="not an empty folder"):
        download_dataset(dest, api_url=_closed_port_url(), timeout_s=2, progress=False)
    assert [path.name for path in dest.iterdir()] == ["notes.txt"]


def test_cli_download(zenodo: FakeZenodo, tmp_path: Path) -> None:
    zenodo.publish("ShipWakes.zip", _zip_bytes())
    dest = tmp_path / "ShipWakes"
    runner = CliRunner()
    result = runner.invoke(main, ["download", "--dest", str(dest), "--api-url", zenodo.api_url])
    assert result.exit_code == 0, result.output
    assert "Next:" in result.output and (dest / "imgs").is_dir()

    zenodo.publish("ShipWakes.zip", _zip_bytes(), checksum="md5:" + "1" * 32)
    failed = runner.invoke(
        main, ["download", "--dest", str(tmp_path / "again"), "--api-url", zenodo.api_url]
    )
    assert failed.exit_code == 2
    assert any(line.startswith("Error: Checksum mismatch") for line in failed.output.splitlines())
    assert not (tmp_path / "again").exists()
