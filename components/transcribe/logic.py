"""transcribe: the user channel → word-timestamped transcript, written to QUARANTINE.

The transcript is unredacted (Whisper writes what the user said, PII included), so it goes to
quarantine/ only; scrub redacts it out of quarantine and deletes every version of it. The user
audio is decoded in memory and never written to a temp file. `transcript_wer` is measured on the
quarantined transcripts (quality.py) before scrub runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from components.common.audio import resample
from components.common.channels import read_channel
from components.common.config import Config
from components.common.stagekit import ItemFailure, StageRun, iter_items, load_manifest, run_items
from components.common.storage import ObjectStore, fetch_s3_uri_to_path
from components.contract import (
    ASR_SAMPLE_RATE,
    IngestedItem,
    Keys,
    ObjectRef,
    Transcript,
    TranscribedItem,
    WordStamp,
    parse_model_alignments,
)
from components.transcribe.asr import load_whisper, transcribe_channel, transcribe_plain

STAGE = "transcribe"


def load_stage_model(cfg: Config):
    """The configured Whisper: a named checkpoint, a local path, or an s3:// model-store URI."""
    return load_whisper(
        cfg.transcribe.model_source,
        Path(cfg.transcribe.model_cache_dir),
        fetch_s3=lambda uri, dest: fetch_s3_uri_to_path(uri, dest, cfg.storage),
    )


def transcribe(cfg: Config, ingest_manifest_id: str) -> StageRun:
    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, ingest_manifest_id)
    model = load_stage_model(cfg)
    asr = transcribe_channel if cfg.transcribe.packed else transcribe_plain

    def process(item: IngestedItem) -> dict:
        audio, rate = read_channel(store, item, "user")
        audio16k = resample(audio, rate, ASR_SAMPLE_RATE)
        del audio
        words = [WordStamp(word=w.text, start=round(w.start, 3), end=round(max(w.end, w.start), 3),
                           confidence=round(w.confidence, 4)) for w in asr(model, audio16k)]
        ref = item.objects["model_text.json"]
        try:
            model_words = parse_model_alignments(store.get_json(ref.key, version_id=ref.version_id))
        except ValueError as exc:
            raise ItemFailure("bad-alignments", str(exc)) from None
        transcript = Transcript(conversation_id=item.conversation_id, redacted=False,
                                asr_model=cfg.transcribe.model_source, duration_s=item.duration_s,
                                user_words=words, model_words=model_words)
        key = Keys.quarantine_transcript(item.conversation_id)
        version = store.put_json(key, transcript.model_dump(mode="json"))
        return TranscribedItem(conversation_id=item.conversation_id,
                               quarantine_transcript=ObjectRef(key=key, version_id=version),
                               user_words=len(words), asr_model=cfg.transcribe.model_source,
                               source=item).model_dump(mode="json")

    def items() -> Iterator[tuple[str, IngestedItem]]:
        for raw in iter_items(store, manifest):
            item = IngestedItem.model_validate(raw)
            yield item.conversation_id, item

    return run_items(store, STAGE, ingest_manifest_id, items(), process,
                     total=manifest.counts.get("items"))
