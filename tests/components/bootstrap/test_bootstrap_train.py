"""SFT loss, batches, schedule and determinism of the bootstrap trainer (tiny models, synthetic
streams: the trainer only sees token rows)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from moshi.models.lm import LMOutput

from components.bootstrap.data import Corpus
from components.bootstrap.train import (blank_model_audio, crop_batch, drop_audio_frames, lm_loss,
                                        lr_at, train_lm)
from components.common.config import load_config
from components.model.spec import build_lm, lm_kwargs
from components.streams.interleave import StreamLayout
from components.streams.tokenizer import EPAD_ID, PAD_ID

NAN = float("nan")


def test_text_loss_weighs_pad_and_epad_and_skips_invalid_positions() -> None:
    # text_card 6; targets: PAD, a word (5), EPAD, an invalid position (NaN logits, masked)
    text_logits = torch.tensor([[2.0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 3.0], [0.5, 0, 0, 0, 0, 0],
                                [NAN] * 6]).view(1, 1, 4, 6)
    text_target = torch.tensor([PAD_ID, 5, EPAD_ID, 4]).view(1, 1, 4)
    text_mask = torch.tensor([True, True, True, False]).view(1, 1, 4)
    # one audio codebook, card 4: valid at t=1,2 only (delays / padding make the rest NaN)
    logits = torch.tensor([[NAN] * 4, [1.0, 0, 0, 0], [0, 0, 2.0, 0], [NAN] * 4]).view(1, 1, 4, 4)
    mask = torch.tensor([False, True, True, False]).view(1, 1, 4)
    audio_target = torch.tensor([0, 0, 1, 0]).view(1, 1, 4)
    codes = torch.cat([text_target, audio_target], dim=1)
    out = LMOutput(logits=logits, mask=mask, text_logits=text_logits, text_mask=text_mask)

    def ce(row: list[float], target: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    c_pad = ce([2, 0, 0, 1, 0, 0], PAD_ID)
    c_word = ce([0, 0, 0, 0, 0, 3], 5)
    c_epad = ce([0.5, 0, 0, 0, 0, 0], EPAD_ID)
    text = (0.5 * c_pad + 1.0 * c_word + 0.5 * c_epad) / (0.5 + 1.0 + 0.5)
    audio = (ce([1, 0, 0, 0], 0) + ce([0, 0, 2, 0], 1)) / 2
    parts = lm_loss(out, codes, dep_q=1, text_pad_weight=0.5, audio_loss_weight=0.7)
    assert float(parts.text) == pytest.approx(text, rel=1e-6)
    assert float(parts.audio) == pytest.approx(audio, rel=1e-6)
    assert float(parts.total) == pytest.approx(text + 0.7 * audio, rel=1e-6)
    # weight 1 is the plain mean over valid positions
    plain = lm_loss(out, codes, dep_q=1, text_pad_weight=1.0, audio_loss_weight=0.0)
    assert float(plain.text) == pytest.approx((c_pad + c_word + c_epad) / 3, rel=1e-6)


def test_lr_warms_up_then_decays_to_a_floor() -> None:
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.55)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 10, 100) == pytest.approx(0.1)


def _synthetic_corpus(layout: StreamLayout, lengths: list[int], seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    codes, info = [], []
    for i, n in enumerate(lengths):
        text = np.where(rng.random(n) < 0.7, PAD_ID, rng.integers(4, layout.text_card, n))
        audio = rng.integers(0, layout.card, (2 * layout.num_codebooks, n))
        codes.append(np.concatenate([text[None], audio]).astype(np.int64))
        info.append({"index": i, "split": "val" if i == len(lengths) - 1 else "train",
                     "model_turns": [], "model_words": []})
    return Corpus(key="synthetic", path=Path("."), layout=layout, codes=codes, info=info)


def test_crops_are_padded_with_the_no_input_token() -> None:
    layout = StreamLayout(num_codebooks=2, text_card=32, card=16)
    corpus = _synthetic_corpus(layout, [5, 40])
    batch = crop_batch(corpus, [0], batch_size=3, window=8, gen=torch.Generator().manual_seed(0))
    assert batch.shape == (3, 5, 8)
    assert (batch[:, :, 5:] == -1).all() and (batch[:, :, :5] >= 0).all()
    assert torch.equal(batch[0], batch[1])  # one 5-frame conversation: always the whole of it
    again = crop_batch(corpus, [0, 1], 4, 8, torch.Generator().manual_seed(3))
    assert torch.equal(again, crop_batch(corpus, [0, 1], 4, 8, torch.Generator().manual_seed(3)))


def _weights_hash(lm: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(lm.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_training_is_deterministic_and_learns() -> None:
    layout = StreamLayout(num_codebooks=2, text_card=48, card=16)
    corpus = _synthetic_corpus(layout, [30, 50, 70, 40])
    cfg = load_config("ci", overrides=["bootstrap.max_steps=6", "bootstrap.batch_size=3",
                                       "bootstrap.window_frames=24", "bootstrap.warmup_steps=2",
                                       "bootstrap.time_budget_s=600", "bootstrap.threads=1"]).bootstrap
    kwargs = lm_kwargs("tiny", layout, context=32)
    runs = []
    for _ in range(2):
        lm = build_lm(kwargs, seed=cfg.seed)
        result = train_lm(lm, corpus, cfg, log_every=3, progress=False)
        runs.append((_weights_hash(lm), result))
    (h1, r1), (h2, r2) = runs
    assert h1 == h2
    assert r1.steps == 6 and not r1.budget_cut and r1.horizon == 6
    assert [rec["step"] for rec in r1.history] == [3, 6]
    assert [{k: v for k, v in rec.items() if k != "seconds"} for rec in r1.history] == \
        [{k: v for k, v in rec.items() if k != "seconds"} for rec in r2.history]
    assert all(math.isfinite(rec["train_loss"]) for rec in r1.history)
    assert math.isfinite(r1.final["val_text_loss"]) and 0 <= r1.final["val_pad_acc"] <= 1
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"] + 1.0


def test_time_budget_stops_training() -> None:
    layout = StreamLayout(num_codebooks=2, text_card=32, card=8)
    corpus = _synthetic_corpus(layout, [30, 30])
    cfg = load_config("ci", overrides=["bootstrap.max_steps=1000", "bootstrap.batch_size=2",
                                       "bootstrap.window_frames=16", "bootstrap.time_budget_s=0.5",
                                       "bootstrap.threads=1"]).bootstrap
    lm = build_lm(lm_kwargs("tiny", layout, context=16), seed=0)
    result = train_lm(lm, corpus, cfg, progress=False)
    assert result.budget_cut and 0 < result.steps < 1000


def test_audio_dropout_blanks_whole_sides_of_frames_and_never_text() -> None:
    q = 2
    codes = torch.randint(0, 8, (4, 1 + 2 * q, 200))
    out = drop_audio_frames(codes, q, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], codes[:, 0])
    for rows in (slice(1, 1 + q), slice(1 + q, 1 + 2 * q)):
        blank = out[:, rows] == -1
        assert torch.equal(blank.all(dim=1), blank.any(dim=1))  # a side's q codes go together
        assert 0.2 < blank.all(dim=1).float().mean() < 0.4
    assert drop_audio_frames(codes, q, 0.0, torch.Generator()) is codes


def test_model_audio_blank_blanks_the_models_own_side_of_whole_crops_only() -> None:
    q = 2
    codes = torch.randint(0, 8, (400, 1 + 2 * q, 30))
    out = blank_model_audio(codes, q, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], codes[:, 0])  # text untouched
    assert torch.equal(out[:, 1 + q :], codes[:, 1 + q :])  # the user's audio untouched
    own = out[:, 1 : 1 + q]
    blank = (own == -1).flatten(1)
    assert torch.equal(blank.all(dim=1), blank.any(dim=1))  # a crop's own audio goes as a whole
    assert 0.4 < blank.all(dim=1).float().mean() < 0.6
    kept = ~blank.all(dim=1)
    assert torch.equal(own[kept], codes[kept, 1 : 1 + q])
    assert blank_model_audio(codes, q, 0.0, torch.Generator()) is codes


def test_drill_share_of_each_batch() -> None:
    layout = StreamLayout(num_codebooks=2, text_card=32, card=16)
    corpus = _synthetic_corpus(layout, [40, 40, 40, 40])
    corpus.info[2]["drill"] = corpus.info[3]["drill"] = True
    corpus.codes[2][:] = 7  # recognisable
    corpus.codes[3][:] = 7
    batch = crop_batch(corpus, [0, 1, 2, 3], 8, 16, torch.Generator().manual_seed(0), drill_share=0.25)
    from_drills = [(b == 7).all().item() for b in batch]
    assert sum(from_drills) == 2
