"""``rvc-lora prepare`` end to end on generated audio: experiment folder, bad inputs, resume, torchrun ranks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import (
    harmonic_tone,
    silence,
    write_garbage,
    write_header_only_wav,
    write_nan_wav,
    write_truncated_wav,
)

from rvc_lora.config import load_config
from rvc_lora.data.experiment import read_info, read_manifest
from rvc_lora.data.index import load_index
from rvc_lora.demo.random_hubert import make_random_checkpoint
from rvc_lora.features.content import ContentModelMissing
from rvc_lora.prepare import choose_validation, run_prepare
from rvc_lora.prepare import pipeline as pipeline_mod
from rvc_lora.utils import RVCLoraError

SR_IN = 16000
FORMATS = sf.available_formats()


def _voice(f0s: list[float], seconds: float = 4.0, gap: float = 0.8, sr: int = SR_IN, amp: float = 0.5):
    parts = []
    for f0 in f0s:
        parts += [harmonic_tone(f0, seconds, sr, amplitude=amp), silence(gap, sr)]
    return np.concatenate(parts)


def make_inputs(root: Path) -> dict[str, str]:
    """Good and bad recordings; returns {relative path: expected problem substring or ''}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    expected = {}
    sf.write(root / "a_voice.wav", _voice([150.0, 200.0]), SR_IN)
    expected["a_voice.wav"] = ""
    sf.write(root / "sub" / "b_voice.flac", _voice([180.0, 240.0]), SR_IN)
    expected["sub/b_voice.flac"] = ""
    stereo = np.stack([_voice([220.0]), _voice([220.0])], axis=1)
    sf.write(root / "c_stereo.wav", stereo, SR_IN)
    expected["c_stereo.wav"] = ""
    if "OGG" in FORMATS:
        sf.write(root / "d_voice.ogg", _voice([170.0]), SR_IN, format="OGG", subtype="VORBIS")
        expected["d_voice.ogg"] = ""
    if "MP3" in FORMATS:
        sf.write(root / "e_voice.mp3", _voice([190.0]), SR_IN, format="MP3")
        expected["e_voice.mp3"] = ""
    three = np.stack([_voice([160.0])] * 3, axis=1)
    sf.write(root / "f_three_channels.wav", three, SR_IN)
    expected["f_three_channels.wav"] = "3 audio channels"
    clipped = np.clip(_voice([210.0], amp=1.0) * 1.5, -1.0, 1.0)
    sf.write(root / "g_clipped.wav", clipped, SR_IN, subtype="PCM_16")
    expected["g_clipped.wav"] = "clipped"
    write_truncated_wav(root / "h_truncated.wav")
    expected["h_truncated.wav"] = "truncated"
    write_garbage(root / "i_garbage.wav")
    expected["i_garbage.wav"] = "unreadable"
    (root / "j_empty.wav").write_bytes(b"")
    expected["j_empty.wav"] = "empty"
    write_header_only_wav(root / "k_zero_frames.wav")
    expected["k_zero_frames.wav"] = "no audio samples"
    sf.write(root / "l_silent.wav", silence(3.0), SR_IN)
    expected["l_silent.wav"] = "all silent"
    write_nan_wav(root / "m_nan.wav")
    expected["m_nan.wav"] = "non-finite"
    sf.write(root / "n_loud.wav", _voice([200.0], seconds=2.0, amp=3.0), SR_IN, subtype="FLOAT")
    expected["n_loud.wav"] = "peak > 2.5"
    (root / "notes.txt").write_text("not audio, not searched")
    return expected


@pytest.fixture(scope="session")
def hubert(tmp_path_factory) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("hubert") / "hubert_tiny.pt", layout="fairseq",
                                  size="tiny")


def make_cfg(inp: Path, exp: Path, hubert: Path, *extra: str):
    return load_config([
        "model=tiny", f"data.input_dir={inp}", f"data.experiment_dir={exp}", "data.name=unit",
        "pitch.method=dio", f"content.path={hubert}", "data.min_total_seconds=10", "data.num_workers=0",
        "data.validation_pieces=3", "data.progress=false", *extra,
    ])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, hubert):
    base = tmp_path_factory.mktemp("prep")
    expected = make_inputs(base / "in")
    report = run_prepare(make_cfg(base / "in", base / "exp", hubert))
    return base, expected, report


def _sources_ok(rows) -> set[str]:
    return {r.source for r in rows if r.status == "ok"}


def test_experiment_folder_is_complete_and_aligned(prepared):
    base, expected, report = prepared
    exp = base / "exp"
    info = read_info(exp)
    from rvc_lora.data.experiment import ExperimentLayout

    layout = ExperimentLayout(exp, info.version)
    rows = read_manifest(layout.manifest_path)
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) == len(report.ok_rows) > 10
    good = {k for k, v in expected.items() if v in ("", "3 audio channels", "clipped")}
    assert _sources_ok(rows) == good  # every usable file (incl. stereo, ogg/mp3, sub folder) gave pieces
    for r in ok:
        gt, w16 = layout.gt_wav(r.name), layout.wav16k(r.name)
        g_info, w_info = sf.info(str(gt)), sf.info(str(w16))
        assert (g_info.samplerate, w_info.samplerate) == (40000, 16000)
        assert g_info.subtype == "FLOAT" and g_info.channels == 1
        assert abs(g_info.frames / 40000 - r.duration_s) < 1e-3
        n16 = w_info.frames
        hz, coarse = np.load(layout.f0_hz(r.name)), np.load(layout.f0_coarse(r.name))
        assert hz.dtype == np.float64 and coarse.dtype == np.int64
        assert hz.shape == coarse.shape == (n16 // 160,)
        assert coarse.min() >= 1 and coarse.max() <= 255
        feat = np.load(layout.feature(r.name))
        assert feat.dtype == np.float32 and feat.shape[1] == info.feature_dim
        assert abs(feat.shape[0] - n16 / 320) <= 1.5  # 50 fps = half the f0 frame rate
        peak = float(np.max(np.abs(sf.read(str(gt))[0])))
        assert peak <= 0.9 * 0.75 + 0.25 * 2.5 + 1e-4  # RVC normalisation of a peak <= 2.5
    # Pieces follow RVC's cutting: the first piece of a file starts at 0 and lasts 3.7 s.
    first = next(r for r in ok if r.name == "0_0")
    assert first.source == "a_voice.wav" and first.start_s == 0.0 and first.duration_s == pytest.approx(3.7)
    # f0 statistics describe the tone of the piece (dio on a 150 Hz harmonic tone).
    assert first.f0_median_hz == pytest.approx(150.0, rel=0.03) and first.voiced_ratio > 0.8
    # Names are <file index>_<piece index> with the index from the sorted relative paths.
    order = sorted(expected, key=lambda s: s)
    for r in ok:
        assert order[int(r.name.split("_")[0])] == r.source


def test_bad_inputs_are_reported_not_fatal(prepared):
    base, expected, report = prepared
    rows = read_manifest(base / "exp" / "manifest.csv")
    table = report.format_table()
    for src, problem in expected.items():
        if not problem:
            assert not [p for p in report.problems if p[0] == src], src
            continue
        matching = [p for p in report.problems if p[0] == src and problem in p[1]]
        assert matching, (src, report.problems)
        assert src in table and problem in table
        file_rows = [r for r in rows if r.source == src]
        if problem in ("3 audio channels", "clipped"):
            assert matching[0][2].startswith("used") or matching[0][2].startswith("mixed")
            assert all(problem in r.problem for r in file_rows if r.status == "ok") and file_rows
        elif problem == "peak > 2.5":
            assert matching[0][2] == "pieces skipped"
            assert file_rows and all(r.status == "skipped" and "peak" in r.problem for r in file_rows)
        else:
            assert len(file_rows) == 1, src
            status = "skipped" if problem == "all silent" else "error"
            assert file_rows[0].status == status and problem in file_rows[0].problem
            assert matching[0][2] == "file skipped"
    # No half-written files anywhere.
    assert not list((base / "exp").rglob("*.tmp"))


def test_filelist_info_and_split(prepared):
    base, _, report = prepared
    exp = base / "exp"
    rows = read_manifest(exp / "manifest.csv")
    ok = [r for r in rows if r.status == "ok"]
    val = [r.name for r in ok if r.split == "val"]
    assert len(val) == 3
    assert set(val) == choose_validation([r.name for r in ok], 3)
    lines = (exp / "filelist.txt").read_text().splitlines()
    assert len(lines) == len(ok) - 3 + 2  # the train pieces, then RVC's silence piece twice
    for line in lines:
        parts = line.split("|")
        assert len(parts) == 5 and parts[4] == "0"
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in parts[:4])
        assert Path(parts[0]).stem not in val
    assert [Path(line.split("|")[0]).name for line in lines[-2:]] == ["mute.wav", "mute.wav"]
    info = read_info(exp)
    assert (info.name, info.version, info.sample_rate, info.f0) == ("unit", "v2", 40000, True)
    assert info.pitch_method == "dio" and info.content_model.endswith("hubert_tiny.pt")
    assert info.feature_dim == 64  # the tiny random HuBERT's width
    assert info.extra["pieces"] == len(ok) and info.extra["val_pieces"] == 3
    assert info.extra["total_seconds"] == pytest.approx(report.total_seconds, abs=0.01)
    assert report.total_seconds > 20


def test_index_is_searchable(prepared):
    base, _, report = prepared
    assert report.index_path is not None and report.index_path.is_file()
    index = load_index(report.index_path)
    train = [r.name for r in report.ok_rows if r.split == "train"]
    feats = np.load(base / "exp" / "3_feature768" / f"{train[0]}.npy")
    total = sum(np.load(base / "exp" / "3_feature768" / f"{n}.npy").shape[0] for n in train)
    assert index.big_npy.shape == (total, feats.shape[1])
    dist, _ = index.search(feats[:5], k=1)
    assert np.allclose(dist[:, 0], 0.0, atol=1e-3)


def test_silence_piece_is_rvcs_and_stays_out_of_validation_and_index(prepared, hubert):
    """RVC's two "mute" filelist rows: 3 s of silence at the model rate, its content features (from the
    experiment's encoder), coarse pitch 1 and f0 0 Hz, the experiment's speaker; trained on, never validated
    on, not in the retrieval index."""
    from rvc_lora.data.experiment import ExperimentLayout, open_experiment
    from rvc_lora.features.content import load_content_encoder
    from rvc_lora.models import mel_settings
    from rvc_lora.train.dataset import PieceDataset, split_pieces

    base, _, report = prepared
    layout = ExperimentLayout(base / "exp", "v2")
    mute = [r for r in read_manifest(layout.manifest_path) if r.status == "mute"]
    assert [(r.name, r.split, r.speaker_id, r.duration_s) for r in mute] == [("mute", "train", 0, 3.0)]
    audio, sr = sf.read(layout.gt_wav("mute"), dtype="float32")
    assert sr == 40000 and audio.shape == (120000,) and not audio.any()
    audio16, sr16 = sf.read(layout.wav16k("mute"), dtype="float32")
    assert sr16 == 16000 and audio16.shape == (48000,) and not audio16.any()
    assert np.array_equal(np.load(layout.f0_coarse("mute")), np.ones(300, np.int64))
    assert np.array_equal(np.load(layout.f0_hz("mute")), np.zeros(300))
    encoder = load_content_encoder(hubert, device="cpu", half=False)
    with torch.no_grad():
        expected = encoder.encode(torch.zeros(1, 48000), "v2")[0].numpy()
    features = np.load(layout.feature("mute"))
    assert features.shape == (149, 64)  # as RVC's mute.npy: HuBERT frames of 48000 samples
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)  # same computation: measured equal
    assert read_info(layout.root).extra["silence_piece"] is True

    # The retrieval index holds the real training features only (as RVC's: its mute lives outside the
    # experiment's feature folder).
    train_rows = [r.name for r in report.ok_rows if r.split == "train"]
    total = sum(np.load(layout.feature(n)).shape[0] for n in train_rows)
    assert load_index(report.index_path).big_npy.shape[0] == total

    # Training uses it twice, never for validation, as a silent item with unvoiced pitch.
    layout, info = open_experiment(base / "exp")
    train, val = split_pieces(layout, 3)
    assert train.count("mute") == 2 and "mute" not in val
    item = PieceDataset(layout, ["mute"], mel_settings("v2", 40000), True, 0)[0]
    assert item["spec"].shape[-1] == 298  # min(300 spectrogram frames, 2 x 149 feature frames)
    assert not item["wave"].any() and (item["pitch"] == 1).all() and not item["pitchf"].any()
    assert torch.equal(item["phone"], torch.from_numpy(np.repeat(features, 2, axis=0)[:298]))


def _snapshot(exp: Path) -> dict[str, int]:
    return {str(p.relative_to(exp)): p.stat().st_mtime_ns for p in exp.rglob("*")
            if p.is_file() and ".prepare" not in p.parts and p.suffix in (".wav", ".npy", ".index")}


def test_rerun_skips_and_resumes(prepared, hubert, tmp_path, monkeypatch):
    base, _, first = prepared
    exp = tmp_path / "exp"
    shutil.copytree(base / "exp", exp)
    cfg = make_cfg(base / "in", exp, hubert)
    before = _snapshot(exp)
    calls = []
    import rvc_lora.prepare.ingest as ingest_mod

    real_read = ingest_mod._read_chunks
    monkeypatch.setattr(ingest_mod, "_read_chunks", lambda *a: (calls.append(a[0]), real_read(*a))[1])
    again = run_prepare(cfg)
    assert calls == []  # nothing decoded again
    assert again.counts == {"decoded": 0, "pieces_written": 0, "pitch_computed": 0, "content_computed": 0,
                            "index_built": 0}
    assert _snapshot(exp) == before
    assert [(r.name, r.status, r.split) for r in again.rows] == [(r.name, r.status, r.split) for r in first.rows]

    # An interrupted run: a piece's audio, another's f0 and a third's features are gone; a stray temp file.
    names = [r.name for r in first.ok_rows]
    (exp / "0_gt_wavs" / f"{names[0]}.wav").unlink()
    (exp / "2b-f0nsf" / f"{names[1]}.wav.npy").unlink()
    (exp / "3_feature768" / f"{names[2]}.npy").unlink()
    stray = exp / "3_feature768" / f".{names[3]}.npy.abc123.tmp"
    stray.write_bytes(b"half")
    resumed = run_prepare(cfg)
    assert calls == [str(base / "in" / first.ok_rows[0].source)]  # only the file with a missing piece
    assert resumed.counts["pieces_written"] == 1
    assert resumed.counts["pitch_computed"] == 1
    assert resumed.counts["content_computed"] == 1
    assert not stray.exists()
    after = _snapshot(exp)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed <= {f"0_gt_wavs/{names[0]}.wav", f"1_16k_wavs/{names[0]}.wav", f"2b-f0nsf/{names[1]}.wav.npy",
                       f"2a_f0/{names[1]}.wav.npy", f"3_feature768/{names[2]}.npy"}
    assert f"3_feature768/{names[2]}.npy" in changed
    assert [(r.name, r.status, r.split) for r in resumed.rows] == [(r.name, r.status, r.split) for r in first.rows]


def test_too_little_audio_stops_before_features(prepared, hubert, tmp_path):
    base, _, _ = prepared
    cfg = make_cfg(base / "in", tmp_path / "exp", hubert, "data.min_total_seconds=1000")
    with pytest.raises(RVCLoraError, match=r"only \d+\.\d s of usable audio found in 1\d file\(s\)") as err:
        run_prepare(cfg)
    assert "1000" in str(err.value) and "i_garbage.wav" in str(err.value)
    assert list((tmp_path / "exp" / "0_gt_wavs").glob("*.wav"))  # ingest ran ...
    assert not list((tmp_path / "exp" / "3_feature768").glob("*.npy"))  # ... the features did not


def test_missing_content_model_fails_first(prepared, tmp_path):
    base, _, _ = prepared
    cfg = make_cfg(base / "in", tmp_path / "exp", tmp_path / "nope.pt")
    with pytest.raises(ContentModelMissing, match="rvc-lora assets download hubert"):
        run_prepare(cfg)
    assert not (tmp_path / "exp").exists()
    cfg = make_cfg(base / "in", tmp_path / "exp", tmp_path / "nope.pt", "content.path=null")
    with pytest.raises(ContentModelMissing):
        run_prepare(cfg)


def test_empty_or_missing_input_dir(hubert, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("x")
    with pytest.raises(RVCLoraError, match="no audio files found"):
        run_prepare(make_cfg(tmp_path / "in", tmp_path / "exp", hubert))
    with pytest.raises(RVCLoraError, match="folder not found"):
        run_prepare(make_cfg(tmp_path / "missing", tmp_path / "exp", hubert))


def test_long_file_is_chunked(hubert, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    sf.write(inp / "long.wav", _voice([150.0, 200.0, 250.0]), SR_IN)
    whole = run_prepare(make_cfg(inp, tmp_path / "a", hubert, "data.min_total_seconds=5", "data.build_index=false"))
    chunked = run_prepare(make_cfg(inp, tmp_path / "b", hubert, "data.min_total_seconds=5",
                                   "data.build_index=false", "data.long_file_minutes=0.1", "data.chunk_seconds=4.8"))
    assert not whole.problems
    assert [p[1] for p in chunked.problems] == ["very long (0.2 min)"]
    assert chunked.problems[0][2] == "used (processed in 4.8 s chunks)"
    # Every tone survives chunking (silence at chunk ends is trimmed, so a little less audio is kept).
    assert 12.0 <= chunked.total_seconds <= whole.total_seconds + 1e-6
    assert {int(r.start_s // 4.8) for r in chunked.ok_rows} == {0, 1, 2}
    medians = sorted({round(r.f0_median_hz / 50) * 50 for r in chunked.ok_rows})
    assert medians == [150, 200, 250]


def test_worker_pool_matches_single_process(prepared, hubert, tmp_path, monkeypatch):
    base, _, first = prepared
    expected = [(r.name, r.status, r.split, r.problem) for r in first.rows]
    # Worker processes (forced even for this small input).
    monkeypatch.setattr(pipeline_mod, "POOL_MIN_BYTES", 0)
    pooled = run_prepare(make_cfg(base / "in", tmp_path / "pool", hubert, "data.num_workers=2"))
    assert [(r.name, r.status, r.split, r.problem) for r in pooled.rows] == expected
    assert pooled.counts["decoded"] == len([f for f in (base / "in").rglob("*") if f.suffix != ".txt" and f.is_file()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prepare_on_two_gloo_ranks_matches_one_process_and_resumes_with_one(prepared, hubert, tmp_path):
    base, _, first = prepared
    expected = [(r.name, r.status, r.split, r.problem) for r in first.rows]
    exp = tmp_path / "two_ranks"
    args = ["model=tiny", f"data.input_dir={base / 'in'}", f"data.experiment_dir={exp}", "data.name=unit",
            "pitch.method=dio", f"content.path={hubert}", "data.min_total_seconds=10", "data.num_workers=0",
            "data.validation_pieces=3", "data.progress=false", "data.shard_timeout_s=300"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "rvc_lora.cli", "prepare", *args],
        capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    rows = read_manifest(exp / "manifest.csv")
    assert [(r.name, r.status, r.split, r.problem) for r in rows] == expected
    assert (exp / "filelist.txt").read_text() == (base / "exp" / "filelist.txt").read_text().replace(
        str(base / "exp"), str(exp))
    two, one = (load_index(next(folder.glob("added_*.index"))) for folder in (exp, base / "exp"))
    assert two.big_npy.shape == one.big_npy.shape
    # The cache is per input file, not per rank: one process finds everything done.
    again = run_prepare(make_cfg(base / "in", exp, hubert))
    assert (again.counts["decoded"], again.counts["pitch_computed"], again.counts["content_computed"]) == (0, 0, 0)
    assert [(r.name, r.status, r.split, r.problem) for r in again.rows] == expected


# Two ranks as run_prepare drives them: rank 1 fails before the first meeting (or never turns up); rank 0
# reaches the meeting, reports what it got and, as run_prepare does, attends the remaining ones with it.
RANK_SCRIPT = """
import contextlib, sys, time
from rvc_lora.prepare import sharding
from rvc_lora.utils import RVCLoraError
shard = sharding.join(timeout_s=float(sys.argv[1]))
if shard.rank == 1 and sys.argv[2] == "fail":
    shard.fail_remaining("disk full")
    print("rank 1 reported")
elif shard.rank == 1:
    time.sleep(float(sys.argv[1]) * 4)
else:
    try:
        shard.exchange("ingest", {"seconds": 1.0})
    except RVCLoraError as err:
        print(err)
        with contextlib.suppress(RVCLoraError):
            shard.fail_remaining(str(err))
sharding.leave(shard)
"""


@pytest.mark.parametrize(("scenario", "expected"), [
    ("fail", "prepare rank 1 failed: disk full"),
    ("silent", "prepare rank 0: gave up waiting for the other ranks at the ingest stage (data.shard_timeout_s=3)"),
])
def test_a_failing_or_silent_rank_stops_the_others_with_one_line(scenario, expected):
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, "3", scenario], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        out0, err0 = ranks[0].communicate(timeout=120)
        if scenario == "fail":
            out1, err1 = ranks[1].communicate(timeout=60)
            assert ranks[1].returncode == 0 and "rank 1 reported" in out1, out1 + err1
    finally:
        ranks[1].kill()
        ranks[1].communicate()
    assert ranks[0].returncode == 0 and expected in out0, out0 + err0


def test_changed_pitch_method_recomputes_only_pitch(prepared, hubert, tmp_path):
    base, _, first = prepared
    exp = tmp_path / "exp"
    shutil.copytree(base / "exp", exp)
    report = run_prepare(make_cfg(base / "in", exp, hubert, "pitch.method=pm"))
    assert report.counts["decoded"] == 0 and report.counts["content_computed"] == 0
    assert report.counts["pitch_computed"] == len(first.ok_rows)
    assert read_info(exp).pitch_method == "pm"
    again = run_prepare(make_cfg(base / "in", exp, hubert, "pitch.method=pm"))
    assert again.counts["pitch_computed"] == 0


def test_prepared_folder_loads_in_training_dataset(prepared):
    from rvc_lora.data.experiment import open_experiment
    from rvc_lora.models import mel_settings
    from rvc_lora.train.dataset import PieceDataset, split_pieces

    base, _, report = prepared
    layout, info = open_experiment(base / "exp")
    train, val = split_pieces(layout, 3)
    assert sorted(val) == sorted(r.name for r in report.ok_rows if r.split == "val")
    item = PieceDataset(layout, train, mel_settings(info.version, info.sample_rate), info.f0, 0)[0]
    frames = item["spec"].shape[-1]
    assert item["pitch"].shape == item["pitchf"].shape == (frames,) and item["phone"].shape == (frames, 64)
    assert frames > 300  # a 3.7 s piece at 100 frames/s, not cut short by misaligned features


def test_settings_problems_are_reported_together(tmp_path):
    from rvc_lora.config import load_config

    cfg = load_config([f"data.input_dir={tmp_path / 'missing'}", f"data.experiment_dir={tmp_path / 'exp'}",
                       "pitch.method=dio"])
    with pytest.raises(RVCLoraError) as err:
        run_prepare(cfg)
    assert "missing: folder not found" in str(err.value) and "content encoder" in str(err.value)
    assert not (tmp_path / "exp").exists()  # nothing written before the settings are valid
