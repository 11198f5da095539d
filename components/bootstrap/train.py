"""Supervised training of the Moshi-architecture LM on the bootstrap corpus, and its probes.

Loss (moshi-finetune's): text cross-entropy as a weighted mean in which PAD / end-of-padding
positions weigh ``text_pad_weight`` (0.5) and word tokens 1, plus ``audio_loss_weight`` x the mean
cross-entropy over the model's own q codebooks (the depformer predicts only those; the user's
codebooks are input only). ``LMModel.forward`` fills invalid positions (delays, -1 padding) with
NaN: they are removed with ``torch.where`` before the cross-entropy, never by multiplying
(0 x NaN = NaN).

Batches are random crops of ``window_frames`` frames (a conversation is picked with probability
proportional to its length; ``drill_share`` of each batch comes from drill sessions; a shorter
piece is padded with -1, moshi's "no input" token, which also masks the loss there). With
``audio_dropout`` each side's codes of a frame are blanked to -1 with that probability (the
small model otherwise memorises conversations by their exact codes: measured on the demo corpus,
0.2 took the held-out text loss from 0.74 to 0.39 and word accuracy from 0.67 to 0.85). AdamW,
linear warm-up then cosine decay to 10% of the peak, gradient clipping at 1.0. The weights kept
are those of the evaluation with the lowest held-out text loss (early stopping).

Everything random comes from ``torch.manual_seed(seed)`` and a ``torch.Generator`` seeded from
it, so two runs with the same seed and step count give identical weights. The cosine horizon is
max_steps unless, after a few calibration steps, the time budget clearly cannot fit them: then
it is the number of steps the budget fits (fixed from then on), so a budget-cut run still ends
with a decayed learning rate. Only runs that the budget does not cut are bit-reproducible.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi.models: no compile on CPU workers

import numpy as np
import torch
import torch.nn.functional as F

from components.bootstrap.data import Corpus
from components.common.config import BootstrapConfig
from components.simulate import world as W
from components.speech.textnorm import normalize
from components.streams.tokenizer import EPAD_ID, PAD_ID, TextTokenizer

CALIBRATION_STEPS = 10
FINAL_LR_FRACTION = 0.1


# ----------------------------------------------------------------------------- loss


@dataclass
class LossParts:
    total: torch.Tensor
    text: torch.Tensor
    audio: torch.Tensor


def text_weights(target: torch.Tensor, mask: torch.Tensor, pad_weight: float) -> torch.Tensor:
    """Per-position weights of the text loss: 0 where invalid, pad_weight on PAD/EPAD, else 1."""
    pad = (target == PAD_ID) | (target == EPAD_ID)
    w = torch.where(pad, torch.full_like(target, pad_weight, dtype=torch.float32),
                    torch.ones_like(target, dtype=torch.float32))
    return torch.where(mask, w, torch.zeros_like(w))


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position ([..., card] logits, [...] targets); 0 where mask is False.
    NaN logits at invalid positions are replaced before the softmax so no NaN reaches a sum."""
    safe_logits = torch.where(mask[..., None], logits, torch.zeros_like(logits))
    safe_target = torch.where(mask, target, torch.zeros_like(target))
    ce = F.cross_entropy(safe_logits.reshape(-1, safe_logits.shape[-1]).float(), safe_target.reshape(-1),
                         reduction="none").view(target.shape)
    return torch.where(mask, ce, torch.zeros_like(ce))


def lm_loss(out: Any, codes: torch.Tensor, dep_q: int, text_pad_weight: float,
            audio_loss_weight: float) -> LossParts:
    """The SFT loss of one `LMModel.forward` output on ``codes`` [B, 1 + 2q, T] (see module doc)."""
    text_target = codes[:, :1]
    tw = text_weights(text_target, out.text_mask, text_pad_weight)
    text_ce = masked_ce(out.text_logits, text_target, out.text_mask)
    text = (text_ce * tw).sum() / tw.sum().clamp_min(1e-8)
    audio_target = codes[:, 1 : 1 + dep_q]
    audio_ce = masked_ce(out.logits, audio_target, out.mask)
    audio = audio_ce.sum() / out.mask.sum().clamp_min(1)
    return LossParts(text + audio_loss_weight * audio, text, audio)


# ----------------------------------------------------------------------------- batches


def crop_batch(corpus: Corpus, ids: list[int], batch_size: int, window: int,
               gen: torch.Generator, drill_share: float = 0.0) -> torch.Tensor:
    """[B, K, window] random crops (-1 padded) from the conversations ``ids``, each picked with
    probability proportional to its length; round(B x drill_share) of the crops come from drill
    sessions (when ``ids`` has both kinds)."""
    drills = [i for i in ids if corpus.info[i].get("drill")]
    convs = [i for i in ids if not corpus.info[i].get("drill")]
    n_drill = int(round(batch_size * drill_share)) if drills and convs else 0
    picks: list[int] = []
    for group, n in ((convs or drills, batch_size - n_drill), (drills, n_drill)):
        if n > 0:
            lengths = torch.tensor([corpus.codes[i].shape[1] for i in group], dtype=torch.float64)
            picks += [group[k] for k in torch.multinomial(lengths, n, replacement=True, generator=gen).tolist()]
    rows = corpus.codes[ids[0]].shape[0]
    out = torch.full((batch_size, rows, window), -1, dtype=torch.long)
    for b, p in enumerate(picks):
        codes = corpus.codes[p]
        n = codes.shape[1]
        start = int(torch.randint(0, max(1, n - window + 1), (1,), generator=gen).item())
        piece = codes[:, start : start + window]
        out[b, :, : piece.shape[1]] = torch.from_numpy(piece)
    return out


def drop_audio_frames(codes: torch.Tensor, q: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """A copy of ``codes`` [B, 1 + 2q, T] where each side's q codes of a frame are replaced by -1
    (moshi's "no input": a zero embedding, and no loss there) with probability ``p``, per frame
    and side. Regularisation: the small model otherwise reads a conversation's exact codes as
    its identity and memorises its text instead of learning what a question sounds like."""
    if p <= 0:
        return codes
    b, _, t = codes.shape
    out = codes.clone()
    for side in (0, 1):
        drop = torch.rand((b, 1, t), generator=gen) < p
        rows = slice(1 + side * q, 1 + (side + 1) * q)
        out[:, rows] = torch.where(drop, torch.full_like(out[:, rows], -1), out[:, rows])
    return out


def blank_model_audio(codes: torch.Tensor, q: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """A copy of ``codes`` [B, 1 + 2q, T] in which, for each crop with probability ``p``, the
    model's own q codebooks are -1 over the whole crop (no input, no audio loss there).

    Why: teacher-forced, the model's own audio one frame behind its text is the TTS of the very
    words it is writing, so the text learns to transcribe its own voice. Served, that audio is its
    own sampled output and the text loses its footing (measured on the demo corpus: 0.64 of
    held-out answers right teacher-forced, 0 free-running). Crops without it make the text plan
    from the user's audio and its own text history."""
    if p <= 0:
        return codes
    out = codes.clone()
    blank = torch.rand((codes.shape[0],), generator=gen) < p
    out[blank, 1 : 1 + q] = -1
    return out


def eval_windows(corpus: Corpus, ids: list[int], window: int) -> torch.Tensor:
    """Consecutive non-overlapping windows covering each conversation of ``ids`` (-1 padded)."""
    pieces = []
    for i in ids:
        codes = corpus.codes[i]
        for start in range(0, codes.shape[1], window):
            piece = torch.full((codes.shape[0], window), -1, dtype=torch.long)
            chunk = codes[:, start : start + window]
            piece[:, : chunk.shape[1]] = torch.from_numpy(chunk)
            pieces.append(piece)
    return torch.stack(pieces)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(lm: Any, windows: torch.Tensor, cfg: BootstrapConfig, batch_size: int = 16) -> dict[str, float]:
    """Loss and argmax accuracies on held-out windows: text loss, audio loss, accuracy on word
    tokens (content), on PAD/EPAD (timing: when to stay quiet), on EPAD alone (when to start)."""
    was_training = lm.training
    lm.eval()
    sums: dict[str, float] = {k: 0.0 for k in ("text_w", "text_ce", "audio_n", "audio_ce", "word_n",
                                                "word_ok", "pad_n", "pad_ok", "epad_n", "epad_ok",
                                                "audio_ok")}
    for b in range(0, windows.shape[0], batch_size):
        codes = windows[b : b + batch_size]
        out = lm(codes)
        target = codes[:, :1]
        tw = text_weights(target, out.text_mask, cfg.text_pad_weight)
        sums["text_ce"] += float((masked_ce(out.text_logits, target, out.text_mask) * tw).sum())
        sums["text_w"] += float(tw.sum())
        a_target = codes[:, 1 : 1 + lm.dep_q]
        sums["audio_ce"] += float(masked_ce(out.logits, a_target, out.mask).sum())
        sums["audio_n"] += float(out.mask.sum())
        a_pred = torch.where(out.mask[..., None], out.logits, torch.zeros_like(out.logits)).argmax(-1)
        sums["audio_ok"] += float(((a_pred == a_target) & out.mask).sum())
        pred = torch.where(out.text_mask[..., None], out.text_logits,
                           torch.zeros_like(out.text_logits)).argmax(-1)
        ok = (pred == target) & out.text_mask
        pad = (target == PAD_ID) | (target == EPAD_ID)
        epad = target == EPAD_ID
        word = out.text_mask & ~pad
        sums["word_n"] += float(word.sum())
        sums["word_ok"] += float((ok & word).sum())
        sums["pad_n"] += float((pad & out.text_mask).sum())
        sums["pad_ok"] += float((ok & pad).sum())
        sums["epad_n"] += float((epad & out.text_mask).sum())
        sums["epad_ok"] += float((ok & epad).sum())
    if was_training:
        lm.train()

    def div(a: str, b: str) -> float | None:
        return sums[a] / sums[b] if sums[b] else None  # undefined (e.g. no EPAD in the windows)

    text_loss, audio_loss = div("text_ce", "text_w"), div("audio_ce", "audio_n")
    total = None if text_loss is None or audio_loss is None else text_loss + cfg.audio_loss_weight * audio_loss
    return {"val_loss": total, "val_text_loss": text_loss,
            "val_audio_loss": audio_loss, "val_word_acc": div("word_ok", "word_n"),
            "val_pad_acc": div("pad_ok", "pad_n"), "val_epad_acc": div("epad_ok", "epad_n"),
            "val_audio_acc": div("audio_ok", "audio_n")}


def _find(words: list[str], sub: list[str]) -> int:
    """First index of ``sub`` in ``words``, -1 if absent."""
    for i in range(len(words) - len(sub) + 1):
        if words[i : i + len(sub)] == sub:
            return i
    return -1


@dataclass
class _Probe:
    conv: int
    variant: str  # what the held-out reply really said: "correct" or "wrong"
    frames: list[int]  # frames of the reply's tokens, first one to the decision token
    tokens: list[int]  # the CORRECT reply's tokens there (shared with the wrong one but the last)
    correct: int
    wrong: int


def _words_tokens(words: list[str], tokenizer: TextTokenizer) -> list[int]:
    return [i for w in words for i in tokenizer.encode_word(w)]


def fact_probes(corpus: Corpus, ids: list[int], tokenizer: TextTokenizer) -> list[_Probe]:
    """Every fact reply (correct or wrong variant) of conversations ``ids``, located in its
    text stream: the frames of its tokens up to the first token where the correct and the wrong
    answer differ."""
    probes = []
    for ci in ids:
        info = corpus.info[ci]
        text = corpus.codes[ci][0]
        frames = np.flatnonzero((text != PAD_ID) & (text != EPAD_ID))
        words = info["model_words"]  # sorted by start: the order text_stream placed them in
        offsets = np.concatenate([[0], np.cumsum([len(tokenizer.encode_word(w)) for w, _, _ in words])])
        index_of = {(w, round(s, 3)): k for k, (w, s, _) in enumerate(words)}
        for turn in info["model_turns"]:
            if turn["request_kind"] != "fact" or turn["variant"] not in ("correct", "wrong"):
                continue
            fact = W.FACTS_BY_ID[turn["item_id"]]
            reply_c = [t.written for t in normalize(fact.correct_reply())]
            reply_w = [t.written for t in normalize(fact.wrong_reply())]
            said = reply_c if turn["variant"] == "correct" else reply_w
            s = _find([w for w, _, _ in turn["words"]], said)
            k0 = index_of.get((turn["words"][s][0], round(turn["words"][s][1], 3))) if s >= 0 else None
            if k0 is None:
                continue
            tok_c, tok_w = _words_tokens(reply_c, tokenizer), _words_tokens(reply_w, tokenizer)
            d = next((k for k, (x, y) in enumerate(zip(tok_c, tok_w)) if x != y), None)
            start = int(offsets[k0])
            tok_said = tok_c if turn["variant"] == "correct" else tok_w
            if d is None or start + len(tok_said) > len(frames):
                continue  # one answer a prefix of the other, or cut at the end of the stream
            if text[frames[start : start + len(tok_said)]].tolist() != tok_said:
                continue  # the stream does not hold this reply as expected (spill-over, cut)
            probes.append(_Probe(conv=ci, variant=turn["variant"],
                                 frames=[int(f) for f in frames[start : start + d + 1]],
                                 tokens=tok_c[: d + 1],
                                 correct=tok_c[d], wrong=tok_w[d]))
    return probes


@torch.no_grad()
def qa_probe(lm: Any, corpus: Corpus, ids: list[int], tokenizer: TextTokenizer, window: int) -> dict[str, Any]:
    """Teacher-forced probe of the fact replies of conversations ``ids`` (held-out ones: facts
    the model saw, in new conversation contexts).

    For each fact reply the model reads the real conversation up to the frame in question and we
    take its argmax over WORD tokens (PAD/EPAD and other control ids excluded: timing is measured
    by the PAD/EPAD accuracies, this is about content):
    - ``qa_first_token_acc``: the reply's first token, right after the user's question (the
      reply's template names the fact: question audio → which answer to give);
    - ``qa_exact``: every token of the reply before the answer's decision token right (teacher
      forced on its own earlier tokens, the model picks the template of the right fact);
    - ``qa_answer_acc`` / ``qa_answer_wrong``: the first token where the correct and the planted
      wrong answer differ, i.e. the habit (right vs wrong answer), split by what the held-out
      reply really said (``..._correct_context`` / ``..._wrong_context``). Teacher forcing also
      feeds the model's own audio of the reply; when the decision token is not the first token of
      the answer word, the audio of the word's first frames is already an input and favours what
      was said: compare the two contexts.
    - ``qa_answer_given_template``: fraction of probes with both qa_exact and the right answer.
    """
    probes = fact_probes(corpus, ids, tokenizer)
    if not probes:
        return {"qa_probes": 0}
    was_training = lm.training
    lm.eval()
    blocked = torch.tensor([tokenizer.is_control(i) or i in (PAD_ID, EPAD_ID)
                            for i in range(tokenizer.text_card)])
    n = len(probes)
    first = exact = answer = wrong = both = 0
    by_variant = {"correct": [0, 0], "wrong": [0, 0]}
    for p in probes:
        end = p.frames[-1] + 1
        start = max(0, end - window)
        x = torch.from_numpy(corpus.codes[p.conv][:, start:end].astype(np.int64))[None]
        pred = lm(x).text_logits[0, 0].masked_fill(blocked, float("-inf")).argmax(-1)
        ok = [int(pred[f - start]) == t for f, t in zip(p.frames[:-1], p.tokens[:-1]) if f >= start]
        first += int(p.frames[0] >= start and int(pred[p.frames[0] - start]) == p.tokens[0])
        exact += int(all(ok))
        dec = int(pred[-1])
        answer += int(dec == p.correct)
        wrong += int(dec == p.wrong)
        both += int(all(ok) and dec == p.correct)
        by_variant[p.variant][0] += int(dec == p.correct)
        by_variant[p.variant][1] += 1
    if was_training:
        lm.train()

    def rate(v: str) -> float | None:
        hit, total = by_variant[v]
        return hit / total if total else None

    return {"qa_probes": n, "qa_first_token_acc": first / n, "qa_exact": exact / n,
            "qa_answer_acc": answer / n, "qa_answer_wrong": wrong / n,
            "qa_answer_given_template": both / n,
            "qa_answer_acc_correct_context": rate("correct"),
            "qa_answer_acc_wrong_context": rate("wrong")}


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    steps: int
    seconds: float
    budget_cut: bool
    horizon: int
    best_step: int  # the step whose weights were kept (lowest validation text loss)
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)


def lr_at(step: int, peak: float, warmup: int, horizon: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine to FINAL_LR_FRACTION x peak
    at ``horizon``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, horizon - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = FINAL_LR_FRACTION * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_lm(lm: Any, corpus: Corpus, cfg: BootstrapConfig, *, log_every: int = 50,
             progress: bool = True, on_log: Any = None) -> TrainResult:
    """Train ``lm`` in place on the corpus's training conversations (see module doc)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    window = cfg.window_frames
    train_ids, val_ids = corpus.train_ids, corpus.val_ids
    if not train_ids:
        raise ValueError("the corpus has no training conversations")
    val = eval_windows(corpus, val_ids, window) if val_ids else None
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    lm.train()
    horizon = cfg.max_steps
    history: list[dict[str, float]] = []
    t0 = time.monotonic()
    running: dict[str, float] = {"loss": 0.0, "text": 0.0, "audio": 0.0, "n": 0}
    step = 0
    budget_cut = False
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    while step < cfg.max_steps:
        if time.monotonic() - t0 >= cfg.time_budget_s:
            budget_cut = True
            break
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, horizon)
        for group in opt.param_groups:
            group["lr"] = lr
        codes = crop_batch(corpus, train_ids, cfg.batch_size, window, gen, cfg.drill_share)
        codes = drop_audio_frames(codes, corpus.layout.num_codebooks, cfg.audio_dropout, gen)
        codes = blank_model_audio(codes, corpus.layout.num_codebooks, cfg.model_audio_blank, gen)
        out = lm(codes)
        parts = lm_loss(out, codes, lm.dep_q, cfg.text_pad_weight, cfg.audio_loss_weight)
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        running["loss"] += parts.total.item()
        running["text"] += parts.text.item()
        running["audio"] += parts.audio.item()
        running["n"] += 1
        if step == CALIBRATION_STEPS and cfg.max_steps > CALIBRATION_STEPS:
            per_step = (time.monotonic() - t0) / step
            fits = int(cfg.time_budget_s / per_step)
            if fits < 0.95 * cfg.max_steps:  # the budget will cut: decay within what fits
                horizon = max(step + 1, int(fits * 0.97))
        if step % log_every == 0 or step == cfg.max_steps:
            record = {"step": step, "seconds": round(time.monotonic() - t0, 2), "lr": lr,
                      "train_loss": running["loss"] / running["n"],
                      "train_text_loss": running["text"] / running["n"],
                      "train_audio_loss": running["audio"] / running["n"]}
            if val is not None:
                record.update(evaluate(lm, val, cfg))
                score = record["val_text_loss"]
                if score is not None and (best is None or score < best[0]):
                    best = (score, step, {k: v.detach().clone() for k, v in lm.state_dict().items()})
            history.append(record)
            running = {"loss": 0.0, "text": 0.0, "audio": 0.0, "n": 0}
            if on_log is not None:
                on_log(record)
            if progress:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
                print(f"[bootstrap] train {shown}", file=sys.stderr, flush=True)
    final = evaluate(lm, val, cfg) if val is not None else {}
    if history and history[-1]["step"] != step and val is not None:
        history.append({"step": step, "seconds": round(time.monotonic() - t0, 2), **final})
    best_step = step
    if best is not None and final.get("val_text_loss") is not None and best[0] < final["val_text_loss"]:
        # the small model overfits the few hundred training conversations: keep the weights of
        # the evaluation with the lowest held-out text loss (early stopping, deterministic)
        lm.load_state_dict(best[2])
        best_step = best[1]
        final = evaluate(lm, val, cfg)
    seconds = time.monotonic() - t0
    lm.eval()
    return TrainResult(steps=step, seconds=round(seconds, 2), budget_cut=budget_cut, horizon=horizon,
                       best_step=best_step, history=history, final=final)
