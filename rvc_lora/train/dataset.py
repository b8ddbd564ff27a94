"""Training data from a prepared experiment folder: pieces, a length-bucketed batch sampler, collation.

One item (``PieceDataset[i]``) is a dict of CPU tensors, ``frames`` = spectrogram frames (100 fps at
hop 400 / 40 kHz)::

    wave   [frames * hop]            float32 target audio at the model rate
    spec   [n_fft // 2 + 1, frames]  linear magnitude spectrogram of the whole piece (RVC's settings), trimmed
    phone  [frames, C]               content features repeated 2x (50 -> 100 fps)
    pitch  [frames] long             coarse pitch 1..255 (f0 models only)
    pitchf [frames] float32          f0 in Hz (f0 models only)
    sid    [] long                   speaker row

Items are RVC's (``TextAudioLoaderMultiNSFsid``): features repeated x2 (50 -> 100 fps), the spectrogram of the
whole piece, then everything trimmed to frames = min(spectrogram frames, 2 * feature frames, max_frames) (and
the pitch frames, which RVC assumes are at least that many).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from rvc_lora.data.experiment import MUTE_COPIES, MUTE_NAME, MUTE_STATUS, ExperimentLayout, read_manifest
from rvc_lora.models import MelSettings, spectrogram
from rvc_lora.utils import RVCLoraError

__all__ = ["BucketBatchSampler", "PieceDataset", "collate_pieces", "split_pieces"]


def split_pieces(layout: ExperimentLayout, validation_pieces: int) -> tuple[list[str], list[str]]:
    """(train names, validation names) of the usable pieces of an experiment.

    Validation pieces are the manifest rows with ``split == "val"``; when there are none, the last
    ``validation_pieces`` of the sorted names are held out (never all of them). Without a manifest
    every piece in ``0_gt_wavs`` is used. RVC's silence piece (``mute``), when the experiment has it, is
    added to the training names ``MUTE_COPIES`` times, as RVC's filelist lists it.
    """
    if layout.manifest_path.is_file():
        rows = read_manifest(layout.manifest_path)
        usable = [r for r in rows if r.status == "ok"]
        train = sorted(r.name for r in usable if r.split != "val")
        val = sorted(r.name for r in usable if r.split == "val")
        mute = any(r.status == MUTE_STATUS for r in rows)
    else:
        names = sorted(p.stem for p in layout.gt_dir.glob("*.wav"))
        train, val = [n for n in names if n != MUTE_NAME], []
        mute = MUTE_NAME in names
    if not val and validation_pieces > 0 and len(train) > 1:
        k = min(int(validation_pieces), len(train) - 1)
        train, val = train[:-k], train[-k:]
    if not train:
        raise RVCLoraError(f"{layout.root}: no usable training pieces (manifest empty or all rejected)")
    return train + [MUTE_NAME] * (MUTE_COPIES if mute else 0), val


@dataclass
class _Piece:
    name: str
    frames: int  # length estimate from the wav header (for bucketing)


class PieceDataset(Dataset):
    """The pieces ``names`` of an experiment folder as training items (see the module docstring)."""

    def __init__(self, layout: ExperimentLayout, names: list[str], settings: MelSettings, f0: bool,
                 speaker_id: int, max_frames: int = 900):
        self.layout = layout
        self.settings = settings
        self.f0 = f0
        self.speaker_id = int(speaker_id)
        self.max_frames = int(max_frames)
        self.pieces: list[_Piece] = []
        for name in names:
            paths = [layout.gt_wav(name), layout.feature(name)]
            if f0:
                paths += [layout.f0_coarse(name), layout.f0_hz(name)]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise RVCLoraError(f"{layout.root}: piece {name!r} is missing {', '.join(missing)}; "
                                   "re-run `rvc-lora prepare`")
            frames = sf.info(str(layout.gt_wav(name))).frames // settings.hop
            self.pieces.append(_Piece(name, max(1, min(frames, self.max_frames))))

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def lengths(self) -> list[int]:
        """Estimated frames per piece (from the audio header), for bucketing."""
        return [p.frames for p in self.pieces]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name = self.pieces[index].name
        hop = self.settings.hop
        wave, sr = sf.read(str(self.layout.gt_wav(name)), dtype="float32", always_2d=False)
        if sr != self.settings.sample_rate:
            raise RVCLoraError(f"{self.layout.gt_wav(name)}: sample rate {sr} Hz, expected "
                               f"{self.settings.sample_rate} Hz (prepared for another model?)")
        if wave.ndim > 1:
            wave = wave.mean(axis=1)
        if len(wave) < self.settings.n_fft:
            raise RVCLoraError(f"{self.layout.gt_wav(name)}: piece too short ({len(wave)} samples, less than one "
                               f"spectrogram window of {self.settings.n_fft})")
        phone = np.repeat(np.load(self.layout.feature(name)).astype(np.float32), 2, axis=0)
        wave_t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        # RVC computes the spectrogram of the whole piece and trims it afterwards (the last frames see the
        # samples after the cut through the window and the reflect padding).
        spec = spectrogram(wave_t.unsqueeze(0), self.settings.n_fft, hop, self.settings.win)[0]
        frames = min(spec.shape[-1], phone.shape[0], self.max_frames)
        item: dict[str, torch.Tensor] = {}
        if self.f0:
            coarse = np.load(self.layout.f0_coarse(name))
            hz = np.load(self.layout.f0_hz(name))
            frames = min(frames, len(coarse), len(hz))
            item["pitch"] = torch.from_numpy(np.asarray(coarse[:frames], dtype=np.int64))
            item["pitchf"] = torch.from_numpy(np.asarray(hz[:frames], dtype=np.float32))
        if frames < 1:
            raise RVCLoraError(f"{self.layout.gt_wav(name)}: piece shorter than one frame")
        item["wave"] = wave_t[: frames * hop]
        item["spec"] = spec[:, :frames]
        item["phone"] = torch.from_numpy(np.ascontiguousarray(phone[:frames]))
        item["sid"] = torch.tensor(self.speaker_id, dtype=torch.long)
        return item


def collate_pieces(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Sort by length (longest first, as RVC) and zero-pad into a batch.

    Returns phone ``[B, T, C]``, phone_lengths ``[B]``, pitch ``[B, T]`` / pitchf ``[B, T]`` (f0 only),
    spec ``[B, F, T]``, spec_lengths ``[B]``, wave ``[B, 1, T * hop]``, wave_lengths ``[B]``, sid ``[B]``.
    """
    items = sorted(items, key=lambda it: it["spec"].shape[-1], reverse=True)
    lengths = torch.tensor([it["spec"].shape[-1] for it in items], dtype=torch.long)
    t_max = int(lengths.max())
    b = len(items)
    hop = items[0]["wave"].shape[0] // items[0]["spec"].shape[-1]
    spec = torch.zeros(b, items[0]["spec"].shape[0], t_max)
    phone = torch.zeros(b, t_max, items[0]["phone"].shape[1])
    wave = torch.zeros(b, 1, t_max * hop)
    out: dict[str, torch.Tensor] = {}
    for i, it in enumerate(items):
        n = it["spec"].shape[-1]
        spec[i, :, :n] = it["spec"]
        phone[i, :n] = it["phone"]
        wave[i, 0, : it["wave"].shape[0]] = it["wave"]
    if "pitch" in items[0]:
        pitch = torch.zeros(b, t_max, dtype=torch.long)
        pitchf = torch.zeros(b, t_max)
        for i, it in enumerate(items):
            n = it["pitch"].shape[0]
            pitch[i, :n] = it["pitch"]
            pitchf[i, :n] = it["pitchf"]
        out["pitch"], out["pitchf"] = pitch, pitchf
    out.update(phone=phone, phone_lengths=lengths.clone(), spec=spec, spec_lengths=lengths,
               wave=wave, wave_lengths=lengths * hop, sid=torch.stack([it["sid"] for it in items]))
    return out


class BucketBatchSampler:
    """Batches of similar-length pieces, reshuffled per epoch, sharded over ``world_size`` ranks.

    Pieces are grouped into buckets of ``bucket_width`` frames; each bucket is shuffled and padded to a
    multiple of ``batch_size`` by repeating its own pieces (RVC's rule), cut into batches, and the batch
    order shuffled. Every rank sees the same number of batches per epoch (the list is padded by
    repetition to a multiple of ``world_size``); rank ``r`` takes batches ``r, r + world, ...``.
    Deterministic given (seed, epoch): resuming mid-epoch means skipping ``start`` batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 1234, bucket_width: int = 100,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.bucket_width = max(1, int(bucket_width))
        self.rank = int(rank)
        self.world_size = int(world_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches (lists of dataset indices) for ``epoch``."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        buckets: dict[int, list[int]] = {}
        for index, length in enumerate(self.lengths):
            buckets.setdefault(length // self.bucket_width, []).append(index)
        all_batches: list[list[int]] = []
        for key in sorted(buckets):
            members = buckets[key][:]
            rng.shuffle(members)
            pad = (-len(members)) % self.batch_size
            members += [members[i % len(members)] for i in range(pad)]
            all_batches += [members[i: i + self.batch_size] for i in range(0, len(members), self.batch_size)]
        rng.shuffle(all_batches)
        pad = (-len(all_batches)) % self.world_size
        all_batches += [all_batches[i % len(all_batches)] for i in range(pad)]
        return all_batches[self.rank:: self.world_size]

    def __len__(self) -> int:
        return len(self.batches(0))


def piece_paths(layout: ExperimentLayout, name: str) -> list[Path]:
    """Files that make up one piece (for messages and tests)."""
    return [layout.gt_wav(name), layout.wav16k(name), layout.feature(name), layout.f0_coarse(name),
            layout.f0_hz(name)]
