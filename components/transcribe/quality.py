"""transcript_wer: the ASR quality of the quarantined transcripts, measured BEFORE redaction.

An audit, not a stage: it is the one task of the pipeline that reads the simulated world's ground
truth, and it runs only when a ground-truth bucket is given (embedded default, CI, benchmarks).
Both sides go through Whisper's English text normaliser, so "Five five five" vs "555" or
punctuation do not count as errors. The report holds aggregate figures only — no text.
"""

from __future__ import annotations

from typing import Any

import jiwer
from whisper.normalizers import EnglishTextNormalizer

from components.common.config import Config
from components.common.stagekit import iter_items, load_manifest
from components.common.storage import ObjectStore
from components.contract import Keys, Transcript, TranscribedItem

_normalise = EnglishTextNormalizer()


def normalise(text: str) -> str:
    return " ".join(_normalise(text).split())


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over a corpus (errors summed over all words, not averaged per item)."""
    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return 0.0
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    errors = out.substitutions + out.deletions + out.insertions
    return errors / sum(len(r.split()) for r, _ in pairs)


def reference_user_text(groundtruth: dict[str, Any]) -> str:
    """What the user said, in order, in WRITTEN form (the simulator's ground-truth schema).

    The written form ("305-555-0124", "maria.lopez@example.com", "eSIM") is what a human
    transcriber writes and what Whisper writes; the spoken form the voice read ("three oh
    five ...", "maria dot lopez at ...") would count formatting as word errors."""
    turns = sorted(groundtruth["user_turns"], key=lambda t: t["start"])
    return " ".join(turn.get("written_text") or turn["text"] for turn in turns)


def measure_transcript_wer(cfg: Config, transcribe_manifest_id: str, groundtruth_bucket: str) -> dict:
    store = ObjectStore.from_config(cfg.storage)
    truth = ObjectStore.from_config(cfg.storage, bucket=groundtruth_bucket)
    manifest = load_manifest(store, transcribe_manifest_id)
    refs: list[str] = []
    hyps: list[str] = []
    for raw in iter_items(store, manifest):
        item = TranscribedItem.model_validate(raw)
        gt_key = Keys.groundtruth(item.conversation_id)
        if not truth.exists(gt_key):
            continue  # not a simulated conversation: no reference
        q = item.quarantine_transcript
        if not store.exists(q.key):
            continue  # already scrubbed (a rerun): quarantine is gone, the report below stays
        transcript = Transcript.model_validate(store.get_json(q.key, version_id=q.version_id))
        refs.append(reference_user_text(truth.get_json(gt_key)))
        hyps.append(" ".join(w.word for w in transcript.user_words))
    key = Keys.report("transcribe", transcribe_manifest_id, "wer.json")
    if not refs and store.exists(key):
        return store.get_json(key)
    report = {"manifest_id": transcribe_manifest_id, "conversations": len(refs),
              "reference_words": sum(len(normalise(r).split()) for r in refs),
              "wer": round(corpus_wer(refs, hyps), 4),
              "normaliser": "whisper.normalizers.EnglishTextNormalizer"}
    store.put_json(key, report)
    return report
