"""Named downloadable assets (HuBERT, RMVPE, RVC pretrained bases) from the Hugging Face Hub.

Files come from ``lj1995/VoiceConversionWebUI`` (RVC's own asset repository) through
``huggingface_hub.hf_hub_download`` (honours ``HF_ENDPOINT``, resumes partial downloads) into a plain
cache folder that mirrors the repository paths::

    <cache>/hubert_base.pt
    <cache>/rmvpe.pt
    <cache>/pretrained_v2/f0G40k.pth ...

``<cache>`` is ``$RVC_LORA_HOME/assets`` if that variable is set, else ``~/.cache/rvc-lora/assets``.
Every file is SHA-256 verified after download: against the hash pinned here when known, otherwise
against the hash the Hub reports for the LFS object (its ETag). A verified file gets a small
``<file>.sha256`` record next to it, so later calls return it without any network access (this is also
what makes ``HF_HUB_OFFLINE=1`` work once cached). A mismatch deletes the file and raises.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rvc_lora.utils import RVCLoraError

RVC_REPO = "lj1995/VoiceConversionWebUI"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Asset:
    """One downloadable file: where it lives on the Hub and what it must hash to (None = ask the Hub)."""

    name: str
    repo_id: str
    filename: str
    description: str
    sha256: str | None = None
    size: int | None = None
    revision: str = "main"


def _registry() -> dict[str, Asset]:
    assets = [
        # Hashes and sizes agree across many independent projects that pin these two files.
        Asset("hubert", RVC_REPO, "hubert_base.pt", "HuBERT-base content encoder (fairseq) used by RVC",
              sha256="f54b40fd2802423a5643779c4861af1e9ee9c1564dc9d32f54f20b5ffba7db96", size=189_507_909),
        Asset("rmvpe", RVC_REPO, "rmvpe.pt", "RMVPE pitch estimator used by RVC",
              sha256="6d62215f4306e3ca278246188607209f09af3dc77ed4232efdd069798c4ec193", size=181_184_272),
    ]
    for version, folder in (("v1", "pretrained"), ("v2", "pretrained_v2")):
        for sr in ("32k", "40k", "48k"):
            for f0 in ("f0", ""):
                for part, what in (("G", "generator"), ("D", "discriminator")):
                    stem = f"{f0}{part}{sr}"
                    pitch = "with pitch" if f0 else "without pitch"
                    assets.append(Asset(
                        f"pretrained-{version}-{stem}", RVC_REPO, f"{folder}/{stem}.pth",
                        f"RVC {version} {sr} pretrained {what} ({pitch})",
                    ))
    return {a.name: a for a in assets}


ASSETS: dict[str, Asset] = _registry()


def list_assets() -> list[Asset]:
    """All registered assets, in registry order."""
    return list(ASSETS.values())


def get_asset(name: str) -> Asset:
    """The registered asset called ``name`` (RVCLoraError listing a few valid names otherwise)."""
    try:
        return ASSETS[name]
    except KeyError:
        raise RVCLoraError(
            f"unknown asset {name!r}; known: hubert, rmvpe, pretrained-v2-f0G40k, ... (`rvc-lora assets list`)"
        ) from None


def default_cache_dir() -> Path:
    """``$RVC_LORA_HOME/assets`` or ``~/.cache/rvc-lora/assets``."""
    home = os.environ.get("RVC_LORA_HOME")
    if home:
        return Path(home).expanduser() / "assets"
    return Path.home() / ".cache" / "rvc-lora" / "assets"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> tuple[str, int] | None:
    try:
        digest, size = _record_path(path).read_text(encoding="utf-8").split()[:2]
        return digest, int(size)
    except (OSError, ValueError):
        return None


def _write_record(path: Path, digest: str) -> None:
    from rvc_lora.utils import atomic_write

    with atomic_write(_record_path(path)) as tmp:
        tmp.write_text(f"{digest} {path.stat().st_size}\n", encoding="utf-8")


def _verified_local(asset: Asset, path: Path) -> bool:
    """True if ``path`` exists and a previous verification still holds (same size, pinned hash agrees)."""
    if not path.is_file():
        return False
    record = _read_record(path)
    if record is None:
        if asset.sha256 is None:
            return False
        digest = sha256_file(path)  # e.g. a file copied in by hand: verify it once, then remember
        if digest != asset.sha256:
            return False
        _write_record(path, digest)
        return True
    digest, size = record
    if size != path.stat().st_size:
        return False
    return asset.sha256 is None or digest == asset.sha256


def asset_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Path of the cached, verified asset ``name``, or None if it is not (yet) downloaded. No network."""
    asset = get_asset(name)
    path = Path(cache_dir or default_cache_dir()) / asset.filename
    return path if _verified_local(asset, path) else None


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_sha256(asset: Asset, endpoint: str | None) -> str | None:
    """The SHA-256 the Hub reports for the file (its LFS ETag), or None for a non-LFS file."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(asset.repo_id, asset.filename, revision=asset.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    etag = (meta.etag or "").strip('"').lower()
    return etag if _SHA256.fullmatch(etag) else None


def _remove(path: Path) -> None:
    for p in (path, _record_path(path)):
        p.unlink(missing_ok=True)


def download_asset(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    endpoint: str | None = None,
) -> Path:
    """Download asset ``name`` (unless already cached and verified) and return its local path.

    ``endpoint``: Hub URL; defaults to ``$HF_ENDPOINT`` read at call time, else huggingface.co.
    ``force``: download again even if a verified copy exists.
    Raises RVCLoraError when offline without a cached copy, when the download fails, or when the file's
    SHA-256 does not match (the bad file is deleted).
    """
    asset = get_asset(name)
    root = Path(cache_dir or default_cache_dir()).expanduser()
    path = root / asset.filename
    if not force and _verified_local(asset, path):
        return path
    if _offline():
        raise RVCLoraError(
            f"asset {name!r} is not in {root} and HF_HUB_OFFLINE is set; download it once while online "
            f"(`rvc-lora assets download {name}`)"
        )
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    from huggingface_hub import hf_hub_download

    try:
        expected = asset.sha256 or _hub_sha256(asset, endpoint)
        _remove(path)
        downloaded = Path(hf_hub_download(
            asset.repo_id, asset.filename, revision=asset.revision, local_dir=root,
            endpoint=endpoint, force_download=force,
        ))
    except Exception as err:  # HTTP errors, connection errors, disk errors from huggingface_hub
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RVCLoraError(
            f"could not download asset {name!r} ({asset.repo_id}/{asset.filename}): {first}. Without network "
            f"access, copy the file to {path} (it is verified against the hub's checksum when it can be), or "
            "pass a local path instead of asset:NAME (e.g. base.g=/path/to/f0G40k.pth)"
        ) from err
    if downloaded.resolve() != path.resolve():  # pragma: no cover - local_dir mirrors the repo path
        raise RVCLoraError(f"asset {name!r} landed at {downloaded}, expected {path}")
    actual = sha256_file(path)
    if expected is None:
        _remove(path)
        raise RVCLoraError(
            f"asset {name!r}: no pinned SHA-256 and the Hub reported none, so the download cannot be verified"
        )
    if actual != expected:
        _remove(path)
        raise RVCLoraError(
            f"asset {name!r}: SHA-256 mismatch for {asset.filename} (expected {expected}, got {actual}); "
            "the file was deleted"
        )
    _write_record(path, actual)
    return path
