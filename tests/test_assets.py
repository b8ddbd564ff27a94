"""Asset downloads against a local fake Hub (127.0.0.1, ephemeral port): never the real network."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rvc_lora import assets
from rvc_lora.assets import Asset, asset_path, download_asset, list_assets
from rvc_lora.utils import RVCLoraError

GOOD = bytes(range(256)) * 40  # 10 KiB payload
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves ``/{repo}/resolve/{rev}/{file}`` like the Hub does for an LFS file (HEAD + GET + Range)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}  # url path -> (served bytes, advertised sha256)
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self, with_body: bool) -> None:
                hub.requests.append((self.command, self.path))
                entry = hub.files.get(self.path.split("?")[0])
                if entry is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, sha = entry
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                part = body[start:]
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{sha}"')
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if with_body:
                    self.wfile.write(part)

            def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
                self._serve(with_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(with_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo: str, filename: str, body: bytes, sha: str) -> None:
        self.files[f"/{repo}/resolve/main/{filename}"] = (body, sha)

    def gets(self) -> int:
        """File downloads served (GETs of resolve routes)."""
        return sum(1 for method, path in self.requests if method == "GET" and "/resolve/" in path)

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything tries to resolve a host other than the local fake hub."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"test tried to reach the network: {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    server = FakeHub()
    # download_asset reads HF_ENDPOINT at call time; huggingface_hub read it at import time, and its
    # request-header code may contact constants.ENDPOINT too, so point that at the fake hub as well
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path_factory.mktemp("hf") / "h.json"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    server.close()


def _register(monkeypatch: pytest.MonkeyPatch, name: str, filename: str, sha256: str | None) -> Asset:
    asset = Asset(name, "test/fake-repo", filename, "test payload", sha256=sha256)
    monkeypatch.setitem(assets.ASSETS, name, asset)
    return asset


def test_registry_names_rvc_files() -> None:
    names = {a.name: a for a in list_assets()}
    assert names["hubert"].filename == "hubert_base.pt"
    assert names["hubert"].repo_id == "lj1995/VoiceConversionWebUI"
    assert names["rmvpe"].filename == "rmvpe.pt"
    assert names["pretrained-v2-f0G40k"].filename == "pretrained_v2/f0G40k.pth"
    assert names["pretrained-v1-D32k"].filename == "pretrained/D32k.pth"
    assert len([n for n in names if n.startswith("pretrained-")]) == 2 * 3 * 2 * 2
    with pytest.raises(RVCLoraError, match="unknown asset"):
        assets.get_asset("nope")


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned-sha", "hub-lfs-sha"])
def test_download_verifies_and_second_call_is_skipped(hub: FakeHub, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, pinned: bool) -> None:
    _register(monkeypatch, "fake", "sub/fake.bin", GOOD_SHA if pinned else None)
    hub.add("test/fake-repo", "sub/fake.bin", GOOD, GOOD_SHA)
    assert asset_path("fake", cache_dir=tmp_path) is None

    path = download_asset("fake", cache_dir=tmp_path)
    assert path == tmp_path / "sub" / "fake.bin"
    assert path.read_bytes() == GOOD
    assert hub.gets() == 1
    assert asset_path("fake", cache_dir=tmp_path) == path

    n_requests = len(hub.requests)
    assert download_asset("fake", cache_dir=tmp_path) == path
    assert len(hub.requests) == n_requests  # cached and verified: no HEAD, no GET

    download_asset("fake", cache_dir=tmp_path, force=True)
    assert hub.gets() == 2


def test_corrupted_payload_is_rejected_and_removed(hub: FakeHub, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "fake", "fake.bin", None)
    bad = bytes(b ^ 0xFF for b in GOOD[:16]) + GOOD[16:]  # same size, different bytes
    hub.add("test/fake-repo", "fake.bin", bad, GOOD_SHA)  # the Hub advertises the good hash
    with pytest.raises(RVCLoraError) as info:
        download_asset("fake", cache_dir=tmp_path)
    message = str(info.value)
    assert "fake" in message and GOOD_SHA in message and hashlib.sha256(bad).hexdigest() in message
    assert not (tmp_path / "fake.bin").exists()
    assert asset_path("fake", cache_dir=tmp_path) is None


def test_pinned_hash_wins_over_the_hub(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "fake", "fake.bin", "0" * 64)
    hub.add("test/fake-repo", "fake.bin", GOOD, GOOD_SHA)
    with pytest.raises(RVCLoraError, match="mismatch"):
        download_asset("fake", cache_dir=tmp_path)
    assert not (tmp_path / "fake.bin").exists()


def test_offline_after_caching(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "fake", "fake.bin", None)
    _register(monkeypatch, "other", "other.bin", None)
    hub.add("test/fake-repo", "fake.bin", GOOD, GOOD_SHA)
    path = download_asset("fake", cache_dir=tmp_path)
    hub.close()  # the "network" is gone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_asset("fake", cache_dir=tmp_path) == path
    with pytest.raises(RVCLoraError, match="HF_HUB_OFFLINE"):
        download_asset("other", cache_dir=tmp_path)


def test_cache_dir_defaults_to_rvc_lora_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RVC_LORA_HOME", str(tmp_path))
    assert assets.default_cache_dir() == tmp_path / "assets"
    monkeypatch.delenv("RVC_LORA_HOME")
    assert assets.default_cache_dir() == Path.home() / ".cache" / "rvc-lora" / "assets"


def test_cli_download_and_asset_references_in_config(hub: FakeHub, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from rvc_lora.cli import main
    from rvc_lora.config import TRAIN_ASSETS, load_config, prepare_assets, resolve_asset_references

    monkeypatch.setenv("RVC_LORA_HOME", str(tmp_path))
    _register(monkeypatch, "fake", "sub/fake.bin", GOOD_SHA)
    hub.add("test/fake-repo", "sub/fake.bin", GOOD, GOOD_SHA)
    assert main(["assets", "download", "fake"]) == 0
    path = Path(capsys.readouterr().out.split("fake: ")[1].strip())
    assert path.read_bytes() == GOOD
    cfg = load_config(["base.g=asset:fake", "content.path=asset:fake", "pitch.method=dio",
                       "pitch.rmvpe_path=asset:not-needed"])
    assert cfg.base.g == "asset:fake"  # composing a config downloads nothing
    resolve_asset_references(cfg, TRAIN_ASSETS)
    assert cfg.base.g == str(path) and cfg.content.path == "asset:fake"
    resolve_asset_references(cfg, prepare_assets(cfg))  # dio pitch: RMVPE is not needed, not fetched
    assert cfg.content.path == str(path) and cfg.pitch.rmvpe_path == "asset:not-needed"
    assert main(["assets", "download", "nope"]) == 2
    assert "unknown asset" in capsys.readouterr().err
