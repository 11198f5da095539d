"""scrub: remove the user's voice and every piece of PII; pseudonymise; keep a privacy ledger.

Per conversation, in an order that is safe to interrupt at any point:
  1. outputs: the redacted transcript (user AND model words: the model may echo the user's PII),
     the model-only audio at 24 kHz with its audio muted over the words that echoed PII, and the
     scrubbed metadata carrying only the pseudonymous user id, and — when the server logged
     them — the model's exact tokens with every frame of a PII echo blanked (NO_TOKEN);
  2. a privacy ledger entry naming every object version about to be deleted and every redaction;
  3. deletes: EVERY version of every raw object (user audio, the stereo original, the raw
     metadata with the serving side's user id, the model text that may echo PII, the user's
     audio codes and the unblanked model tokens) and of the
     quarantined unredacted transcript;
  4. the completion marker.
A rerun after a crash in 1–2 redoes the outputs (deterministically), after 2–3 finds the ledger
entry and only finishes the deletes. After the stage, the store reclaims deleted bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone

from components.common.audio import encode_wav, mute_spans, resample
from components.common.channels import read_channel
from components.common.config import Config
from components.common.stagekit import StageRun, iter_items, load_manifest, run_items
from components.common.storage import ObjectStore
from components.contract import (
    MODEL_SAMPLE_RATE,
    MODEL_TOKENS_METADATA,
    MODEL_TOKENS_OBJECT,
    NO_TOKEN,
    ModelTokens,
    Keys,
    ObjectRef,
    PrivacyLedgerEntry,
    RedactionSpan,
    ScrubbedItem,
    TranscribedItem,
    Transcript,
    WordStamp,
)
from components.scrub.pii import redact_words

STAGE = "scrub"


def blank_token_frames(tokens: ModelTokens, spans: list[tuple[float, float]]) -> int:
    """Write NO_TOKEN over every frame a redacted span touches, in the text stream and the
    model's audio codes; returns the number of frames blanked. The frame holding a word's first
    token is floor(start * fr) (the interleaving rule), its end frame is ceil(end * fr); one frame
    of margin on each side covers the end-of-padding marker and token overflow."""
    blanked = 0
    for start, end in spans:
        lo = max(0, int(start * tokens.frame_rate) - 1)
        hi = min(tokens.frames, int(-(-end * tokens.frame_rate // 1)) + 1)
        if hi > lo:
            blanked += int((tokens.text[lo:hi] != NO_TOKEN).sum())
            tokens.text[lo:hi] = NO_TOKEN
            tokens.model_codes[:, lo:hi] = NO_TOKEN
    return blanked


def _redact(words: list[WordStamp], side: str) -> tuple[list[WordStamp], list[RedactionSpan]]:
    result = redact_words(words)
    redacted = [WordStamp(word=w.text, start=w.start, end=w.end, confidence=w.confidence)
                for w in result.words]
    spans = [RedactionSpan(side=side, entity=s.entity_type, placeholder=s.placeholder,
                           start=s.start_s, end=s.end_s) for s in result.spans]
    return redacted, spans


def _versions_of(store: ObjectStore, keys: list[str]) -> list[dict]:
    return [{"key": k, "versions": sum(1 for v in store.list_versions(k) if v.key == k)}
            for k in keys]


def _current_ref(store: ObjectStore, key: str) -> ObjectRef:
    info = store.stat(key)
    if info is None:
        raise RuntimeError(f"ledger entry exists but output {key} is missing")
    return ObjectRef(key=key, version_id=info.version_id)


def scrub(cfg: Config, transcribe_manifest_id: str) -> StageRun:
    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, transcribe_manifest_id)
    run = f"{STAGE}-{transcribe_manifest_id}"

    def write_outputs(item: TranscribedItem) -> tuple[dict[str, ObjectRef], list[RedactionSpan], float]:
        src = item.source
        q = item.quarantine_transcript
        transcript = Transcript.model_validate(store.get_json(q.key, version_id=q.version_id))
        user_words, user_spans = _redact(transcript.user_words, "user")
        model_words, model_spans = _redact(transcript.model_words, "model")

        audio, rate = read_channel(store, src, "model")
        audio = resample(audio, rate, MODEL_SAMPLE_RATE).copy()
        pad = cfg.scrub.mute_padding_s
        muted = mute_spans(audio, MODEL_SAMPLE_RATE,
                           [(max(0.0, s.start - pad), s.end + pad) for s in model_spans])

        out = Transcript(conversation_id=src.conversation_id, redacted=True,
                         asr_model=transcript.asr_model, duration_s=transcript.duration_s,
                         user_words=user_words, model_words=model_words)
        refs = {
            "transcript": ObjectRef(key=Keys.transcript(src.conversation_id), version_id=store.put_json(
                Keys.transcript(src.conversation_id), out.model_dump(mode="json"))),
            "model_audio": ObjectRef(key=Keys.conversation_audio(src.conversation_id),
                                     version_id=store.put_bytes(
                                         Keys.conversation_audio(src.conversation_id),
                                         encode_wav(audio, MODEL_SAMPLE_RATE),
                                         content_type="audio/wav")),
        }
        if MODEL_TOKENS_OBJECT in src.objects:
            ref = src.objects[MODEL_TOKENS_OBJECT]
            tokens = ModelTokens.from_bytes(store.get_bytes(ref.key, version_id=ref.version_id))
            blank_token_frames(tokens, [(s.start - pad, s.end + pad) for s in model_spans])
            key = Keys.conversation_tokens(src.conversation_id)
            refs["model_tokens"] = ObjectRef(key=key, version_id=store.put_bytes(
                key, tokens.to_bytes(), content_type="application/octet-stream",
                metadata=dict(MODEL_TOKENS_METADATA)))
        metadata = {"conversation_id": src.conversation_id, "user_pseudonym": src.user_pseudonym,
                    "model_version": src.model_version, "started_at": src.started_at.isoformat(),
                    "duration_s": src.duration_s, "sample_rate": MODEL_SAMPLE_RATE,
                    "source_layout": src.audio_layout, "source_sample_rate": src.source_sample_rate}
        meta_key = Keys.conversation_metadata(src.conversation_id)
        refs["metadata"] = ObjectRef(key=meta_key, version_id=store.put_json(meta_key, metadata))
        return refs, user_spans + model_spans, muted

    def process(item: TranscribedItem) -> dict:
        src = item.source
        to_delete = sorted({ref.key for ref in src.objects.values()} | {item.quarantine_transcript.key})
        ledger_key = Keys.privacy_ledger(src.conversation_id, run)
        if store.exists(ledger_key):  # crashed after the ledger entry: outputs are in place
            entry = PrivacyLedgerEntry.model_validate(store.get_json(ledger_key))
            outputs = [("transcript", Keys.transcript(src.conversation_id)),
                       ("model_audio", Keys.conversation_audio(src.conversation_id)),
                       ("metadata", Keys.conversation_metadata(src.conversation_id))]
            if MODEL_TOKENS_OBJECT in src.objects:
                outputs.append(("model_tokens", Keys.conversation_tokens(src.conversation_id)))
            refs = {name: _current_ref(store, key) for name, key in outputs}
            spans = entry.redactions
        else:
            refs, spans, muted = write_outputs(item)
            entry = PrivacyLedgerEntry(conversation_id=src.conversation_id,
                                       user_pseudonym=src.user_pseudonym, run=run,
                                       at=datetime.now(timezone.utc),
                                       deleted=_versions_of(store, to_delete), redactions=spans,
                                       muted_model_audio_s=round(muted, 3),
                                       note="raw user audio (and user codes), raw metadata, raw "
                                            "model text and tokens, and the unredacted transcript "
                                            "deleted in every version")
            store.put_json(ledger_key, entry.model_dump(mode="json"))
        for key in to_delete:
            store.delete_all_versions(key)
        counts = Counter(f"{s.side}:{s.placeholder}" for s in spans)
        return ScrubbedItem(conversation_id=src.conversation_id, user_pseudonym=src.user_pseudonym,
                            model_version=src.model_version, started_at=src.started_at,
                            duration_s=src.duration_s, transcript=refs["transcript"],
                            model_audio=refs["model_audio"], metadata=refs["metadata"],
                            model_tokens=refs.get("model_tokens"), redactions=dict(sorted(counts.items()))).model_dump(mode="json")

    def items() -> Iterator[tuple[str, TranscribedItem]]:
        for raw in iter_items(store, manifest):
            item = TranscribedItem.model_validate(raw)
            yield item.conversation_id, item

    result = run_items(store, STAGE, transcribe_manifest_id, items(), process,
                       total=manifest.counts.get("items"))
    if cfg.scrub.vacuum_after:
        store.reclaim_deleted_space()
    return result
