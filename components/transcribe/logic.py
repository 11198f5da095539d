"""transcribe: the user channel → word-timestamped transcript, written to QUARANTINE.

The transcript is unredacted (Whisper writes what the user said, PII included), so it goes to
quarantine/ only; scrub redacts it out of quarantine and deletes every version of it. The user
audio is decoded in memory and never written to a temp file. `transcript_wer` is measured on the
quarantined transcripts (quality.py) before scrub runs.

Batching (packed path): the stage loop hands each window of up to `transcribe.batch_items` pending
conversations to `prefetch`, which decodes their user channels and transcribes them together
(`transcribe_many` packs the speech of several conversations into shared Whisper windows and
keeps every CPU busy); `process` then writes each conversation's transcript and marker. A
conversation whose audio cannot be read (or whose batch fails) fails alone, with the same error
it would have raised on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from components.common.audio import resample
from components.common.channels import read_channel
from components.common.config import Config
from components.common.stagekit import (
    WINDOW,
    ItemFailure,
    StageRun,
    iter_items,
    load_manifest,
    run_items,
)
from components.common.storage import ObjectStore, fetch_s3_uri_to_path
from components.contract import (
    ASR_SAMPLE_RATE,
    IngestedItem,
    Keys,
    ObjectRef,
    TranscribedItem,
    Transcript,
    WordStamp,
    parse_model_alignments,
)
from components.speech.asr import (
    Word,
    load_whisper,
    transcribe_channel,
    transcribe_many,
    transcribe_plain,
)

STAGE = "transcribe"

log = logging.getLogger(__name__)

#: A batch is split further so that it never holds more than this many seconds of user audio
#: (~38 MB at 16 kHz float32) ...
BATCH_AUDIO_S = 600.0
#: ... and a conversation longer than this is transcribed on its own (it fills windows alone).
ALONE_AUDIO_S = 300.0


def _batches(items: list[IngestedItem]) -> Iterator[list[IngestedItem]]:
    """Consecutive sub-batches bounded by BATCH_AUDIO_S; long conversations alone."""
    batch: list[IngestedItem] = []
    seconds = 0.0
    for item in items:
        long = item.duration_s > ALONE_AUDIO_S
        if batch and (long or seconds + item.duration_s > BATCH_AUDIO_S):
            yield batch
            batch, seconds = [], 0.0
        batch.append(item)
        seconds += item.duration_s
        if long:
            yield batch
            batch, seconds = [], 0.0
    if batch:
        yield batch


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
    packed = cfg.transcribe.packed
    # conversation id -> its words, or the exception its audio/ASR raised (re-raised by process)
    ready: dict[str, list[Word] | BaseException] = {}

    def user_audio(item: IngestedItem) -> np.ndarray:
        audio, rate = read_channel(store, item, "user")
        return resample(audio, rate, ASR_SAMPLE_RATE)

    def prefetch(items: list[IngestedItem]) -> None:
        for batch in _batches(items):
            audio: dict[str, np.ndarray] = {}
            for item in batch:
                try:
                    audio[item.conversation_id] = user_audio(item)
                except Exception as exc:  # noqa: BLE001 - this item fails alone, in process()
                    ready[item.conversation_id] = exc
            if not audio:
                continue
            try:
                ready.update(zip(audio, transcribe_many(model, list(audio.values()))))
            except Exception:  # noqa: BLE001 - find the culprit: one conversation at a time
                log.warning("batched transcription of %d conversations failed; retrying them "
                            "one by one", len(audio), exc_info=True)
                for cid, a in audio.items():
                    try:
                        ready[cid] = transcribe_many(model, [a])[0]
                    except Exception as exc:  # noqa: BLE001
                        ready[cid] = exc
            del audio

    def process(item: IngestedItem) -> dict:
        asr_words = ready.pop(item.conversation_id, None)
        if isinstance(asr_words, BaseException):
            raise asr_words
        if asr_words is None:  # the plain path (or an item prefetch did not see)
            asr = transcribe_channel if packed else transcribe_plain
            asr_words = asr(model, user_audio(item))
        words = [WordStamp(word=w.text, start=round(w.start, 3), end=round(max(w.end, w.start), 3),
                           confidence=round(w.confidence, 4)) for w in asr_words]
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
                     total=manifest.counts.get("items"),
                     prefetch=prefetch if packed else None,
                     window=cfg.transcribe.batch_items if packed else WINDOW)
