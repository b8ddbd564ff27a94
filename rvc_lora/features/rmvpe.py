"""RMVPE pitch estimator: network with the state-dict layout of RVC's ``rmvpe.pt``, mel front end, decoder.

Layout (as built by RVC's ``E2E(4, 1, (2, 2))`` in ``infer/lib/rmvpe.py``): a U-Net over the log-mel
image [B, 1, frames, 128] (5 encoder stages 1->16->32->64->128->256 channels with 2x2 average pooling,
4 intermediate stages at 512 channels, 5 transposed-conv decoder stages back to 16), each stage made of
4 residual 3x3 conv blocks with batch norm; a 3x3 conv to 3 channels; a 1-layer bidirectional GRU
(384 -> 2x256) and a linear layer to 360 pitch bins with a sigmoid (20-cent bins from ~31.7 Hz).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rvc_lora.safe_load import load_torch_file
from rvc_lora.utils import RVCLoraError

SAMPLE_RATE = 16000
HOP = 160
N_FFT = 1024
N_MELS = 128
FMIN = 30.0
FMAX = 8000.0
N_BINS = 360
CENTS_OFFSET = 1997.3794084376191  # cents (re 10 Hz) of bin 0
CENTS_PER_BIN = 20.0
FRAME_MULTIPLE = 32  # 2**5 encoder poolings


class ResidualConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU layers plus an identity (or 1x1 conv) skip.

    [B, Cin, H, W] -> [B, Cout, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, momentum: float = 0.01):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.conv(x) + skip


class ResidualStage(nn.Module):
    """``n_blocks`` residual blocks, optionally followed by average pooling (encoder stages)."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, pool: tuple[int, int] | None):
        super().__init__()
        chans = [in_channels] + [out_channels] * n_blocks
        pairs = zip(chans[:-1], chans[1:], strict=True)
        self.conv = nn.ModuleList(ResidualConvBlock(a, b) for a, b in pairs)
        self.pool = nn.AvgPool2d(pool) if pool is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class Encoder(nn.Module):
    """Input batch norm + stages that double the channels and halve time and frequency."""

    def __init__(self, in_channels: int, n_stages: int, pool: tuple[int, int], n_blocks: int, width: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels, momentum=0.01)
        self.layers = nn.ModuleList()
        for _ in range(n_stages):
            self.layers.append(ResidualStage(in_channels, width, n_blocks, pool))
            in_channels, width = width, width * 2
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        x = self.bn(x)
        for stage in self.layers:
            x = stage(x)
            skips.append(x)
            x = stage.pool(x)
        return x, skips


class Intermediate(nn.Module):
    """Stages without pooling at the bottom of the U-Net."""

    def __init__(self, in_channels: int, out_channels: int, n_stages: int, n_blocks: int):
        super().__init__()
        chans = [in_channels] + [out_channels] * n_stages
        pairs = zip(chans[:-1], chans[1:], strict=True)
        self.layers = nn.ModuleList(ResidualStage(a, b, n_blocks, None) for a, b in pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.layers:
            x = stage(x)
        return x


class DecoderStage(nn.Module):
    """Transposed-conv upsampling (x2), concatenation with the encoder skip, residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int], n_blocks: int):
        super().__init__()
        out_pad = (0, 1) if tuple(stride) == (1, 2) else (1, 1)
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(
                in_channels, out_channels, 3, stride=stride, padding=1, output_padding=out_pad, bias=False
            ),
            nn.BatchNorm2d(out_channels, momentum=0.01),
            nn.ReLU(),
        )
        chans = [out_channels * 2] + [out_channels] * n_blocks
        pairs = zip(chans[:-1], chans[1:], strict=True)
        self.conv2 = nn.ModuleList(ResidualConvBlock(a, b) for a, b in pairs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class Decoder(nn.Module):
    """Stages that halve the channels and double time and frequency, consuming skips in reverse."""

    def __init__(self, in_channels: int, n_stages: int, stride: tuple[int, int], n_blocks: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(n_stages):
            self.layers.append(DecoderStage(in_channels, in_channels // 2, stride, n_blocks))
            in_channels //= 2

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.layers, reversed(skips), strict=True):
            x = stage(x, skip)
        return x


class UNet(nn.Module):
    """Encoder -> intermediate -> decoder. [B, 1, T, 128] -> [B, width, T, 128] (T a multiple of 32)."""

    def __init__(self, pool: tuple[int, int], n_blocks: int, n_stages: int = 5, n_inter: int = 4,
                 in_channels: int = 1, width: int = 16):
        super().__init__()
        self.encoder = Encoder(in_channels, n_stages, pool, n_blocks, width)
        bottom = self.encoder.out_channels
        self.intermediate = Intermediate(bottom, bottom * 2, n_inter, n_blocks)
        self.decoder = Decoder(bottom * 2, n_stages, pool, n_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGRU(nn.Module):
    """Batch-first bidirectional GRU returning only the output sequence. [B, T, Cin] -> [B, T, 2*H]."""

    def __init__(self, in_features: int, hidden: int, num_layers: int):
        super().__init__()
        self.gru = nn.GRU(in_features, hidden, num_layers=num_layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class RMVPENet(nn.Module):
    """Salience network: log-mel [B, 128, T] (T multiple of 32) -> pitch-bin salience [B, T, 360] in (0, 1).

    Defaults reproduce RVC's ``E2E(4, 1, (2, 2))``; parameter names equal those of ``rmvpe.pt``.
    """

    def __init__(self, n_blocks: int = 4, n_gru: int = 1, pool: tuple[int, int] = (2, 2), n_stages: int = 5,
                 n_inter: int = 4, width: int = 16):
        super().__init__()
        self.unet = UNet(pool, n_blocks, n_stages, n_inter, 1, width)
        self.cnn = nn.Conv2d(width, 3, 3, padding=1)
        if n_gru:
            self.fc = nn.Sequential(BiGRU(3 * N_MELS, 256, n_gru), nn.Linear(512, N_BINS), nn.Dropout(0.25),
                                    nn.Sigmoid())
        else:
            self.fc = nn.Sequential(nn.Linear(3 * N_MELS, N_BINS), nn.Dropout(0.25), nn.Sigmoid())

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.transpose(-1, -2).unsqueeze(1)  # [B, 1, T, 128]
        x = self.cnn(self.unet(x))  # [B, 3, T, 128]
        x = x.transpose(1, 2).flatten(-2)  # [B, T, 384]
        return self.fc(x)


class LogMel(nn.Module):
    """RMVPE's front end: 16 kHz audio [B, N] -> log-mel [B, 128, N // 160 + 1].

    Hann-windowed STFT (n_fft = win = 1024, hop 160, centred with reflect padding), magnitude,
    HTK-scale mel filterbank 30-8000 Hz (librosa, Slaney area norm), natural log of max(mel, 1e-5).
    """

    def __init__(self):
        super().__init__()
        import librosa

        basis = librosa.filters.mel(
            sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=True
        )
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, N_FFT, hop_length=HOP, win_length=N_FFT, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        magnitude = spec.abs()
        mel = torch.matmul(self.mel_basis, magnitude)
        return torch.log(torch.clamp(mel, min=1e-5))


_CENTS = np.pad(CENTS_PER_BIN * np.arange(N_BINS) + CENTS_OFFSET, (4, 4))


def salience_to_f0(salience: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """Decode salience [T, 360] to f0 in Hz [T] (float64); 0 where the peak salience <= ``threshold``.

    Cents = salience-weighted mean of the bin cents over the 9 bins centred on the argmax (bins beyond
    the edges count as zero); f0 = 10 * 2**(cents / 1200).
    """
    salience = np.asarray(salience, dtype=np.float32)
    n = salience.shape[0]
    if n == 0:
        return np.zeros(0)
    center = np.argmax(salience, axis=1)
    padded = np.pad(salience, ((0, 0), (4, 4)))
    cols = center[:, None] + np.arange(9)[None, :]  # window [center-4, center+4] in padded coordinates
    window = padded[np.arange(n)[:, None], cols]
    cents_window = _CENTS[cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        cents = np.sum(window * cents_window, axis=1) / np.sum(window, axis=1)
    cents[np.max(salience, axis=1) <= threshold] = 0.0
    f0 = 10.0 * 2.0 ** (cents / 1200.0)
    f0[f0 == 10.0] = 0.0
    return f0


def checkpoint_mismatch(model: nn.Module, state: dict) -> list[str]:
    """Human-readable differences between ``state`` and ``model.state_dict()`` (keys and shapes).

    BatchNorm ``num_batches_tracked`` counters are optional (old checkpoints lack them).
    """
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
    return problems


class RMVPE:
    """Loaded RMVPE estimator. ``rmvpe(audio16k)`` -> f0 in Hz [N // 160 + 1] (float32, 0 = unvoiced)."""

    def __init__(self, net: RMVPENet, device: torch.device | str = "cpu", half: bool = False):
        self.device = torch.device(device)
        self.half = bool(half and self.device.type == "cuda")
        self.net = net.to(self.device).eval()
        if self.half:
            self.net = self.net.half()
        self.mel = LogMel().to(self.device)

    @torch.no_grad()
    def salience(self, audio16k: np.ndarray) -> np.ndarray:
        """Salience [N // 160 + 1, 360] (float32) for mono 16 kHz audio [N].

        The network needs a multiple of 32 frames: as RVC does (since its PR #1168), the log-mel is
        padded on the right with zeros and the padded frames are dropped from the output. A zero
        log-mel is a loud frame (silence is log 1e-5 = -11.5), so the last frames' salience depends on
        this choice; RVC's is followed so that f0 matches its output to the end of the input.
        """
        audio = torch.as_tensor(np.asarray(audio16k, dtype=np.float32), device=self.device)[None]
        if audio.shape[-1] <= N_FFT // 2:
            # reflect padding needs more than n_fft/2 samples; zero-extend very short inputs
            audio = torch.nn.functional.pad(audio, (0, N_FFT // 2 + 1 - audio.shape[-1]))
        mel = self.mel(audio)  # [1, 128, frames]
        n_frames = audio16k.shape[0] // HOP + 1
        mel = mel[..., :n_frames]
        pad = FRAME_MULTIPLE * ((n_frames - 1) // FRAME_MULTIPLE + 1) - n_frames
        if pad:
            mel = torch.nn.functional.pad(mel, (0, pad), mode="constant", value=0.0)
        if self.half:
            mel = mel.half()
        hidden = self.net(mel)[:, :n_frames]
        return hidden[0].float().cpu().numpy()

    def __call__(self, audio16k: np.ndarray, threshold: float = 0.03) -> np.ndarray:
        return salience_to_f0(self.salience(audio16k), threshold).astype(np.float32)


def load_rmvpe(path: str | os.PathLike, device: torch.device | str = "cpu", half: bool = False) -> RMVPE:
    """Load RVC's ``rmvpe.pt`` (a plain state dict) strictly and safely (``weights_only=True``).

    Raises ``RVCLoraError`` naming the file if it is missing, not a torch state dict, or does not
    match the RMVPE layout (lists missing/unexpected keys and shape mismatches).
    """
    p = Path(path)
    if not p.is_file():
        raise RVCLoraError(f"{p}: RMVPE weights not found (RVC's assets/rmvpe/rmvpe.pt)")
    state = load_torch_file(p)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RVCLoraError(f"{p}: expected a state dict of tensors for RMVPE")
    net = RMVPENet()
    problems = checkpoint_mismatch(net, state)
    if problems:
        raise RVCLoraError(f"{p}: does not match the RMVPE network layout: " + "; ".join(problems))
    state = dict(state)
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    net.load_state_dict(state, strict=True)
    return RMVPE(net, device=device, half=half)
