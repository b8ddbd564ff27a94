"""trainer.best_metric: which validation step becomes best_adapter.safetensors (mel L1 or speaker similarity)."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from train_helpers import make_setup, tiny_config

from rvc_lora.train import run_training
from rvc_lora.train.speaker_similarity import resolve_best_metric
from rvc_lora.utils import RVCLoraError


def test_unknown_best_metric_is_refused_before_training(tmp_path):
    make_setup(tmp_path)
    with pytest.raises(RVCLoraError, match=r"trainer.best_metric: Invalid value 'loudness', expected one of "
                                           r"\[auto, mel_l1, speaker_similarity\]"):
        run_training(tiny_config(tmp_path, **{"trainer.best_metric": "loudness"}))
    assert not (tmp_path / "run" / "checkpoints").exists()


def _best_metadata(run):
    with safe_open(str(run / "best_adapter.safetensors"), "pt") as handle:
        meta = handle.metadata()
    return {k: (json.loads(v) if v[:1] in "{[" else v) for k, v in meta.items()}


def test_mel_l1_keeps_the_lowest_validation_loss(tmp_path):
    make_setup(tmp_path)
    result = run_training(tiny_config(tmp_path, **{"trainer.best_metric": "mel_l1"}))
    assert result.best_metric == "mel_l1" and result.best_step in (2, 4) and result.best_value > 0
    meta = json.dumps(_best_metadata(tmp_path / "run"))
    assert '"best_metric": "mel_l1"' in meta


def test_speaker_similarity_scores_validation_conversions(tmp_path):
    pytest.importorskip("resemblyzer")
    make_setup(tmp_path)
    result = run_training(tiny_config(tmp_path, **{"trainer.best_metric": "speaker_similarity"}))
    assert result.best_metric == "speaker_similarity"
    assert -1.0 <= result.best_value <= 1.0 and result.best_step in (2, 4)
    assert '"best_metric": "speaker_similarity"' in json.dumps(_best_metadata(tmp_path / "run"))


def test_auto_follows_whether_resemblyzer_is_installed(monkeypatch):
    import rvc_lora.train.speaker_similarity as mod

    monkeypatch.setattr(mod, "resemblyzer_available", lambda: False)
    assert resolve_best_metric("auto") == "mel_l1"
    with pytest.raises(RVCLoraError, match="needs resemblyzer"):
        resolve_best_metric("speaker_similarity")
    monkeypatch.setattr(mod, "resemblyzer_available", lambda: True)
    assert resolve_best_metric("auto") == "speaker_similarity"


def test_similarity_is_one_for_the_same_voice_and_lower_for_another():
    pytest.importorskip("resemblyzer")
    from rvc_lora.demo.voices import SPEAKERS, utterance
    from rvc_lora.train.speaker_similarity import SpeakerSimilarity

    scorer = SpeakerSimilarity()
    a = [utterance(SPEAKERS[0], seed, sr=16000) for seed in range(3)]
    b = [utterance(SPEAKERS[2], seed, sr=16000) for seed in range(10, 12)]
    assert scorer.score(a[:1], a[:1], 16000) == pytest.approx(1.0, abs=1e-5)  # identical clip: cosine 1
    assert scorer.score(a[1:], a[:1], 16000) > scorer.score(b, a[:1], 16000)
