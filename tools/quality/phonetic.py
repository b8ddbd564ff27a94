"""A small phonetic content encoder (the benchmark's stand-in for HuBERT) and its speaker-leakage probe.

``PhoneticEncoder``: 16 kHz audio ``[1, N]`` -> ``[frames, 256]`` at 50 Hz with RVC's frame count (400-sample
window, 320-sample hop). Log-mel (80 bands) normalised per utterance -> a convolution and 5 residual
dilated convolutions (receptive field +-0.6 s) -> a 256-d layer-normalised bottleneck. Trained with a
linear head to predict each frame's espeak phoneme on the base voices only; the head is dropped and the
rest is saved as TorchScript, which ``prepare`` and ``convert`` load through ``content.kind=torchscript``
/ ``--content-model``.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from torch import nn

from rvc_lora.audio.resample import resample

SR = 16000
WINDOW, HOP, N_MELS, DIM = 400, 320, 80, 256
SILENCE = "_"


def phoneme_name(raw: str) -> str:
    """espeak mnemonic without stress marks; every pause is one silence label."""
    name = raw.replace("'", "").replace(",", "")
    return SILENCE if not name or name.startswith("_") else name


class PhoneticEncoder(nn.Module):
    """Audio [1, N] at 16 kHz -> content features [(N - 400) // 320 + 1, 256]."""

    def __init__(self, hidden: int = 192) -> None:
        super().__init__()
        mel = librosa.filters.mel(sr=SR, n_fft=WINDOW, n_mels=N_MELS, fmin=40.0, fmax=7600.0)
        self.register_buffer("mel_basis", torch.from_numpy(mel).float())
        self.register_buffer("window", torch.hann_window(WINDOW))
        self.pre = nn.Conv1d(N_MELS, hidden, 5, padding=2)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d)) for d in (1, 2, 4, 8, 1)
        )
        self.bottleneck = nn.Linear(hidden, DIM)
        self.norm = nn.LayerNorm(DIM)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, N] -> per-utterance normalised log-mel [B, 80, frames]."""
        spec = torch.stft(audio, 400, 320, 400, self.window, center=False, return_complex=True).abs()  # WINDOW, HOP
        mel = torch.log(torch.matmul(self.mel_basis, spec) + 1e-5)
        return (mel - mel.mean(dim=-1, keepdim=True)) / (mel.std(dim=-1, keepdim=True) + 1e-5)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, N] -> [B, frames, 256]."""
        x = self.pre(self.log_mel(audio))
        for block in self.blocks:
            x = x + block(x)
        return self.norm(self.bottleneck(torch.relu(x).transpose(1, 2)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.features(audio)[0]


def load_16k(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32")
    return resample(audio, sr, SR)


def frame_labels(events: list, n_frames: int, vocab: dict[str, int]) -> np.ndarray:
    """The phoneme at each frame centre ([n_frames] int64); silence before the first event."""
    starts = np.array([t for t, _ in events], dtype=np.float64)
    names = [vocab.get(phoneme_name(p), vocab[SILENCE]) for _, p in events]
    centres = (np.arange(n_frames) * HOP + WINDOW / 2) / SR
    idx = np.searchsorted(starts, centres, side="right") - 1
    out = np.full(n_frames, vocab[SILENCE], dtype=np.int64)
    ok = idx >= 0
    out[ok] = np.asarray(names, dtype=np.int64)[idx[ok]]
    return out


def _dataset(corpus: Path, files: list[str], labels: dict, vocab: dict[str, int]):
    items = []
    for rel in files:
        audio = load_16k(corpus / rel)
        n = (audio.shape[0] - WINDOW) // HOP + 1
        items.append((torch.from_numpy(audio), torch.from_numpy(frame_labels(labels[rel], n, vocab))))
    return items


def train_encoder(corpus: Path, base_voices: list[str], out: Path, steps: int, seed: int = 0,
                  log=print) -> dict:
    """Train on the base voices' ``train`` clips; save TorchScript to ``out``; returns a summary dict."""
    labels = json.loads((corpus / "labels.json").read_text())
    files = sorted(k for k in labels if k.split("/")[0] in base_voices and k.split("/")[1] == "train")
    vocab_names = sorted({phoneme_name(p) for k in files for _, p in labels[k]} | {SILENCE})
    vocab = {p: i for i, p in enumerate(vocab_names)}
    rng = random.Random(seed)
    rng.shuffle(files)
    n_val = max(2, len(files) // 20)
    val, train = _dataset(corpus, files[:n_val], labels, vocab), _dataset(corpus, files[n_val:], labels, vocab)
    torch.manual_seed(seed)
    model = PhoneticEncoder()
    head = nn.Linear(DIM, len(vocab))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=max(0.1, 2.5 / steps))
    batch = 8
    for step in range(steps):
        picks = [train[rng.randrange(len(train))] for _ in range(batch)]
        n = min(a.shape[0] for a, _ in picks)
        crop = min(n, SR * 2)
        audios, targets = [], []
        for a, lab in picks:
            start = rng.randrange(0, a.shape[0] - crop + 1)
            start -= start % HOP
            audios.append(a[start:start + crop])
            f = (crop - WINDOW) // HOP + 1
            targets.append(lab[start // HOP:start // HOP + f])
        logits = head(model.features(torch.stack(audios)))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.stack(targets).reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"  encoder step {step + 1}/{steps}: loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        correct = total = 0
        for a, lab in val:
            pred = head(model.features(a.unsqueeze(0)))[0].argmax(-1)
            correct += int((pred == lab).sum())
            total += lab.numel()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with warnings.catch_warnings():  # torch >= 2.10 calls TorchScript deprecated; rvc-lora still loads it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(tmp))
    tmp.replace(out)
    return {"phonemes": len(vocab), "frame_accuracy": correct / max(1, total), "train_clips": len(train),
            "steps": steps}


def _probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(max_iter=300)
    probe.fit(scaler.transform(train_x), train_y)
    return float(probe.score(scaler.transform(test_x), test_y))


def speaker_leakage(corpus: Path, voices: list[str], encoder_path: Path, clips_per_voice: int = 12,
                    frames_per_clip: int = 60, seed: int = 0) -> dict:
    """Frame-level speaker-ID accuracy of a linear probe on the encoder's features vs on log-mel.

    Per voice, the probe trains on the first half of ``clips_per_voice`` clips and is tested on the other
    half (different sentences); chance = 1 / len(voices).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        encoder = torch.jit.load(str(encoder_path))
    mel_model = PhoneticEncoder()
    rng = np.random.default_rng(seed)
    sets = {"encoder": ([], [], [], []), "log_mel": ([], [], [], [])}
    for label, voice in enumerate(voices):
        paths = sorted((corpus / voice / "train").glob("*.wav"))[-clips_per_voice:]
        for j, path in enumerate(paths):
            audio = torch.from_numpy(load_16k(path)).unsqueeze(0)
            with torch.no_grad():
                feats = {"encoder": encoder(audio).numpy(),
                         "log_mel": torch.log(torch.matmul(mel_model.mel_basis, torch.stft(
                             audio, WINDOW, HOP, WINDOW, mel_model.window, center=False,
                             return_complex=True).abs()) + 1e-5)[0].T.numpy()}
            pick = rng.choice(feats["encoder"].shape[0], size=min(frames_per_clip, feats["encoder"].shape[0]),
                              replace=False)
            for kind, f in feats.items():
                xs_tr, ys_tr, xs_te, ys_te = sets[kind]
                (xs_tr if j < len(paths) // 2 else xs_te).append(f[pick])
                (ys_tr if j < len(paths) // 2 else ys_te).append(np.full(pick.shape[0], label))
    result = {"chance": 1.0 / len(voices)}
    for kind, (xs_tr, ys_tr, xs_te, ys_te) in sets.items():
        result[kind] = _probe_accuracy(np.concatenate(xs_tr), np.concatenate(ys_tr), np.concatenate(xs_te),
                                       np.concatenate(ys_te))
    return result
