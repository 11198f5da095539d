"""The data contract every stage shares — the only thing stages know about each other.

Stages exchange data through the object store, laid out as below, and through manifests: a
manifest is an immutable JSON object whose id is the hash of its content; a stage reads exactly
one input manifest (never a mutable prefix) and writes exactly one output manifest. The human
readable version of this module is docs/contract.md; keep both in step.

Bucket layout (data bucket)::

    raw/<batch>/<conversation_id>/metadata.json     logged conversation metadata (ConversationMetadata)
    raw/<batch>/<conversation_id>/audio.wav         stereo layout: left = model, right = user
    raw/<batch>/<conversation_id>/model.wav         separate layout: the model's channel
    raw/<batch>/<conversation_id>/user.wav          separate layout: the user's channel
    raw/<batch>/<conversation_id>/model_text.json   the model's words {"alignments": [[w, [s, e], spk]]}
    raw/<batch>/<conversation_id>/model_tokens.npz  optional: the model's EXACT per-frame tokens
                                                    (text + its audio codes, ModelTokens)
    raw/<batch>/<conversation_id>/user_codes.npz    optional: the user's audio codes — user audio
    kb/<doc_id>.json                                the operator's knowledge base (KbDocument)
    manifests/<stage>/<manifest_id>.json            every manifest (Manifest)
    manifests/<stage>/shards/<sha256>.jsonl         its items and rejects, content-addressed
    state/<stage>/<input_manifest_id>/<item>.json   per-item completion markers (ItemResult)
    quarantine/transcripts/<conversation_id>.json   UNREDACTED transcript, deleted by scrub
    transcripts/<conversation_id>.json              redacted transcript (Transcript, redacted=True)
    conversations/<conversation_id>/model.wav       model-only audio after scrub (PII echoes muted)
    conversations/<conversation_id>/metadata.json   scrubbed metadata (pseudonymous user id)
    conversations/<conversation_id>/model_tokens.npz the model's tokens after scrub (PII frames -1)
    ledger/privacy/<conversation_id>/<run>.json     privacy ledger entries (PrivacyLedgerEntry)
    ledger/erasure/<request_id>.json                an erasure request: found, removed, lineage, re-scan
    ledger/erasure/<request_id>.html                the same as a page (components/erase)
    ledger/retention/<run>.json                     a retention run: what expired and was deleted
    judgements/<conversation_id>/<judge_key>.json   the judge's verdict on a conversation (ConversationJudgement)
    cache/judge/<sha256>.json                       judge responses by content hash (a rerun pays nothing twice)
    pairs/<pair_id>/user.wav                        resynthesised user side (TTS, no user's voice), 24 kHz
    pairs/<pair_id>/chosen_model.wav                model channel with the chosen reply placed on it, 24 kHz
    pairs/<pair_id>/rejected_model.wav              model channel of the rejected side (logged, or resynthesised)
    pairs/<pair_id>/resynthesis.json                what was synthesised where (ResynthesisRecord)
    pairs/<pair_id>/tensors-<settings>-<inputs>.npz the pair's token tensors (tokenize; one-pair shard layout)
    datasets/pairs/<version>/manifest.json          a pair-tensor dataset version (PairDatasetManifest)
    datasets/pairs/shards/<sha256>.npz              its tensors, PAIRS_PER_SHARD pairs per shard
    features/<view>/<sha256>.parquet                Feast offline rows of a feature view (conversation_stats,
                                                    user_consent, pair_features), content-addressed parts
    reports/<stage>/<manifest_id>/...               reports (rejects, summaries, HTML)
    mlflow-artifacts/...                            the MLflow server's artifact store

The ground truth of the simulated world lives in a separate bucket that no stage reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1

# Canonical sample rates: Mimi (the model's codec) runs at 24 kHz, Whisper at 16 kHz.
MODEL_SAMPLE_RATE = 24_000
ASR_SAMPLE_RATE = 16_000

MODEL_SPEAKER = "SPEAKER_MAIN"  # speaker label of the model's words in moshi-finetune alignments

CONVERSATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# User metadata (sent as x-amz-meta-duplexalign-content) that marks objects holding user audio,
# so audits can count them by content class rather than by guessing from names.
CONTENT_CLASS_KEY = "duplexalign-content"
USER_AUDIO = "user-audio"
USER_AUDIO_METADATA = {CONTENT_CLASS_KEY: USER_AUDIO}
# Speech synthesised by the pipeline (resynthesize's user side, pairs/<id>/user.wav): no user's
# voice, so never counted as user audio although it carries a user-side name.
SYNTHETIC_SPEECH = "synthetic-speech"
SYNTHETIC_SPEECH_METADATA = {CONTENT_CLASS_KEY: SYNTHETIC_SPEECH}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- keys


class Keys:
    """Every object key the stages use. Builders only: no stage formats keys by hand."""

    RAW = "raw/"
    KB = "kb/"
    FEATURES = "features/"

    @staticmethod
    def raw_prefix(batch: str, conversation_id: str) -> str:
        return f"raw/{batch}/{conversation_id}/"

    @staticmethod
    def manifest(stage: str, manifest_id: str) -> str:
        return f"manifests/{stage}/{manifest_id}.json"

    @staticmethod
    def manifest_shard(stage: str, digest: str) -> str:
        return f"manifests/{stage}/shards/{digest}.jsonl"

    @staticmethod
    def item_state(stage: str, input_manifest_id: str, item_id: str) -> str:
        return f"state/{stage}/{input_manifest_id}/{item_id}.json"

    @staticmethod
    def item_state_prefix(stage: str, input_manifest_id: str) -> str:
        return f"state/{stage}/{input_manifest_id}/"

    @staticmethod
    def quarantine_transcript(conversation_id: str) -> str:
        return f"quarantine/transcripts/{conversation_id}.json"

    @staticmethod
    def transcript(conversation_id: str) -> str:
        return f"transcripts/{conversation_id}.json"

    @staticmethod
    def conversation_audio(conversation_id: str) -> str:
        return f"conversations/{conversation_id}/model.wav"

    @staticmethod
    def conversation_metadata(conversation_id: str) -> str:
        return f"conversations/{conversation_id}/metadata.json"

    @staticmethod
    def conversation_tokens(conversation_id: str) -> str:
        return f"conversations/{conversation_id}/model_tokens.npz"

    @staticmethod
    def privacy_ledger(conversation_id: str, run: str) -> str:
        return f"ledger/privacy/{conversation_id}/{run}.json"

    @staticmethod
    def erasure_ledger(request_id: str, suffix: str = "json") -> str:
        return f"ledger/erasure/{request_id}.{suffix}"

    @staticmethod
    def retention_ledger(run: str) -> str:
        return f"ledger/retention/{run}.json"

    @staticmethod
    def report(stage: str, manifest_id: str, name: str) -> str:
        return f"reports/{stage}/{manifest_id}/{name}"

    @staticmethod
    def model_tag_segment(tag: str) -> str:
        """A model version tag as ONE key segment: "duplexalign-moshi/3" → "duplexalign-moshi-3",
        "path:1a2b…" → "path-1a2b…" (evaluation and gate keys name models by their tags)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", tag).strip("-.") or "unknown"

    @staticmethod
    def evaluation(challenger_tag: str, champion_tag: str, name: str) -> str:
        """A champion-vs-challenger comparison (components/evaluate/compare.py): comparison.json,
        comparison.html, comparison.csv."""
        return (f"reports/evaluate/{Keys.model_tag_segment(challenger_tag)}-vs-"
                f"{Keys.model_tag_segment(champion_tag)}/{name}")

    @staticmethod
    def gate_decision(challenger_tag: str) -> str:
        """The promotion gate's decision record about a challenger (the deploy step reads it)."""
        return f"reports/gate/{Keys.model_tag_segment(challenger_tag)}/decision.json"

    @staticmethod
    def kb_document(doc_id: str) -> str:
        return f"kb/{doc_id}.json"

    @staticmethod
    def judgement(conversation_id: str, judge_key: str) -> str:
        return f"judgements/{conversation_id}/{judge_key}.json"

    @staticmethod
    def judge_cache(digest: str) -> str:
        return f"cache/judge/{digest}.json"

    @staticmethod
    def pair_object(pair_id: str, name: str) -> str:
        """name: user.wav, chosen_model.wav, rejected_model.wav, resynthesis.json,
        tensors-<settings digest>-<inputs digest>.npz (tokenize)."""
        return f"pairs/{pair_id}/{name}"

    @staticmethod
    def pair_dataset_manifest(version: str) -> str:
        return f"datasets/pairs/{version}/manifest.json"

    @staticmethod
    def pair_dataset_shard(digest: str) -> str:
        """Content-addressed (sha256 of the shard's bytes): identical tensors are stored once."""
        return f"datasets/pairs/shards/{digest}.npz"

    REFERENCE_LOGPS = "train/reference-logps"

    @staticmethod
    def reference_logps_prefix(dataset_version: str) -> str:
        """The trainer's cached reference log-probs of one dataset version (erasure deletes or
        moves them with the version)."""
        return f"{Keys.REFERENCE_LOGPS}/{dataset_version}/"

    @staticmethod
    def feature_prefix(view: str) -> str:
        """Where a Feast feature view's offline rows live (its FileSource reads the folder)."""
        return f"{Keys.FEATURES}{view}/"

    @staticmethod
    def feature_part(view: str, digest: str) -> str:
        """One parquet part of a view, addressed by the sha256 of its rows (without their
        ``created`` time): writing the same rows twice writes nothing new."""
        return f"{Keys.FEATURES}{view}/{digest}.parquet"

    @staticmethod
    def groundtruth(conversation_id: str) -> str:
        """Key in the GROUND-TRUTH bucket (simulator and audits only)."""
        return f"conversations/{conversation_id}.json"


# --------------------------------------------------------------------------- logged conversation


class WordStamp(_Model):
    word: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    confidence: float | None = None

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: float, info: Any) -> float:
        start = info.data.get("start")
        if start is not None and end < start:
            raise ValueError(f"word ends ({end}) before it starts ({start})")
        return end


class ConversationMetadata(_Model):
    """metadata.json of a logged conversation, as the serving side writes it."""

    schema_version: int = SCHEMA_VERSION
    conversation_id: str
    user_id: str = Field(min_length=1, max_length=256)
    model_version: str = Field(min_length=1)
    started_at: datetime
    sample_rate: int = Field(gt=0)
    audio_layout: Literal["stereo", "separate"]

    @field_validator("conversation_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not CONVERSATION_ID_RE.match(value):
            raise ValueError("conversation_id must match " + CONVERSATION_ID_RE.pattern)
        return value


def audio_objects(layout: str) -> tuple[str, ...]:
    """Object names a conversation must carry for its audio layout."""
    return ("audio.wav",) if layout == "stereo" else ("model.wav", "user.wav")


REQUIRED_OBJECTS = ("metadata.json", "model_text.json")
# Logged by a Moshi-class server (the model's exact tokens; the user's codes). Optional: a
# conversation logged without them (audio + words only) is still valid input.
MODEL_TOKENS_OBJECT = "model_tokens.npz"
USER_CODES_OBJECT = "user_codes.npz"
OPTIONAL_OBJECTS = (MODEL_TOKENS_OBJECT, USER_CODES_OBJECT)
MODEL_TOKENS = "model-tokens"
MODEL_TOKENS_METADATA = {CONTENT_CLASS_KEY: MODEL_TOKENS}
# Token value for "no token here": moshi's zero_token_id. The model gets no input from it and no
# loss is computed on it; scrub writes it over the frames of redacted PII.
NO_TOKEN = -1


class ModelTokens:
    """What the model produced, frame by frame (12.5 Hz), as ``model_tokens.npz`` holds it.

    ``text`` [T] are its text-stream tokens (inner monologue, PAD/EPAD included) and
    ``model_codes`` [q, T] its audio codes, time-aligned (undelayed). These — not a re-encoding
    of its audio nor a re-interleaving of its words — are what becomes the rejected side of a
    preference pair: they are exactly the sequence the model generated. ``user_codes.npz``
    (same layout, key ``codes``) is user audio and is deleted with it."""

    def __init__(self, text: Any, model_codes: Any, *, frame_rate: float, tokenizer_hash: str,
                 codec_hash: str, model_version: str) -> None:
        import numpy as np

        self.text = np.asarray(text, dtype=np.int32)
        self.model_codes = np.asarray(model_codes, dtype=np.int32)
        if self.text.ndim != 1 or self.model_codes.ndim != 2 or \
                self.model_codes.shape[1] != self.text.shape[0]:
            raise ValueError(f"model tokens: text {self.text.shape} and model codes "
                             f"{self.model_codes.shape} are not [T] and [q, T]")
        self.frame_rate = float(frame_rate)
        self.tokenizer_hash = tokenizer_hash
        self.codec_hash = codec_hash
        self.model_version = model_version

    @property
    def frames(self) -> int:
        return int(self.text.shape[0])

    def to_bytes(self) -> bytes:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.savez_compressed(buf, text=self.text, model_codes=self.model_codes,
                            frame_rate=np.float64(self.frame_rate),
                            tokenizer_hash=np.str_(self.tokenizer_hash),
                            codec_hash=np.str_(self.codec_hash),
                            model_version=np.str_(self.model_version))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ModelTokens":
        import io

        import numpy as np

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls(z["text"], z["model_codes"], frame_rate=float(z["frame_rate"]),
                           tokenizer_hash=str(z["tokenizer_hash"]), codec_hash=str(z["codec_hash"]),
                           model_version=str(z["model_version"]))
        except (KeyError, OSError, ValueError, EOFError) as exc:
            raise ValueError(f"not a model_tokens.npz: {exc}") from None


def parse_model_alignments(payload: Any) -> list[WordStamp]:
    """moshi-finetune's {"alignments": [[word, [start, end], speaker], ...]} → model words.

    Only the model's own words are kept (the text stream is the model's inner monologue)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alignments"), list):
        raise ValueError('model_text.json must be an object with an "alignments" list')
    words: list[WordStamp] = []
    for i, row in enumerate(payload["alignments"]):
        try:
            word, (start, end), speaker = row
        except (TypeError, ValueError):
            raise ValueError(f"alignment {i} is not [word, [start, end], speaker]") from None
        if speaker != MODEL_SPEAKER:
            continue
        words.append(WordStamp(word=str(word), start=float(start), end=float(end)))
    for a, b in zip(words, words[1:]):
        if b.start < a.start:
            raise ValueError(f"model words are not in time order at {b.word!r} ({b.start}s)")
    return words


def model_alignments_payload(words: list[WordStamp]) -> dict[str, Any]:
    return {"alignments": [[w.word, [w.start, w.end], MODEL_SPEAKER] for w in words]}


# --------------------------------------------------------------------------- manifests


class ObjectRef(_Model):
    """A pinned object: key plus the version that was read, so inputs never shift under a run."""

    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None


class ItemError(_Model):
    item: str
    code: str
    reason: str


class Manifest(_Model):
    """An immutable list of work items produced by one stage for the next.

    Items and rejects live in content-addressed JSONL shards (`Keys.manifest_shard`), so a stage
    streams a manifest of any size in constant memory. `manifest_id` is "<stage>-" + the SHA-256
    of (stage, input, shard hashes): an identical rerun produces the identical manifest, and
    nothing is doubled."""

    schema_version: int = SCHEMA_VERSION
    stage: str
    manifest_id: str = ""
    input_manifest_id: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    item_shards: list[str] = Field(default_factory=list)
    reject_shards: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)

    def content_id(self) -> str:
        body = {
            "schema_version": self.schema_version,
            "stage": self.stage,
            "input": self.input_manifest_id,
            "items": self.item_shards,
            "rejected": self.reject_shards,
        }
        digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        return f"{self.stage}-{digest[:24]}"

    def sealed(self) -> "Manifest":
        return self.model_copy(update={"manifest_id": self.content_id()})


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class RawItem(_Model):
    """One logged conversation in a raw (input) manifest."""

    conversation_id: str
    prefix: str
    objects: dict[str, ObjectRef]


class IngestedItem(_Model):
    """A conversation that passed ingest: validated, consented, deduplicated."""

    conversation_id: str
    user_pseudonym: str
    model_version: str
    started_at: datetime
    audio_layout: Literal["stereo", "separate"]
    source_sample_rate: int
    duration_s: float
    objects: dict[str, ObjectRef]


class TranscribedItem(_Model):
    conversation_id: str
    quarantine_transcript: ObjectRef
    user_words: int
    asr_model: str
    source: IngestedItem  # carried along so scrub knows every raw object to delete


class ScrubbedItem(_Model):
    conversation_id: str
    user_pseudonym: str
    model_version: str
    started_at: datetime
    duration_s: float
    transcript: ObjectRef
    model_audio: ObjectRef
    metadata: ObjectRef
    redactions: dict[str, int]
    model_tokens: ObjectRef | None = None  # when the server logged the model's exact tokens


class ItemResult(_Model):
    """Per-item completion marker: written last, so its presence means the item is done."""

    item: str
    status: Literal["done", "failed", "dropped"]
    output: dict[str, Any] | None = None
    error: ItemError | None = None


# --------------------------------------------------------------------------- stage outputs


class Transcript(_Model):
    """A conversation's words on both sides. In quarantine unredacted; out of it, redacted."""

    schema_version: int = SCHEMA_VERSION
    conversation_id: str
    redacted: bool
    asr_model: str
    duration_s: float
    user_words: list[WordStamp]
    model_words: list[WordStamp]


class RedactionSpan(_Model):
    """What was redacted: type and time span only — never the redacted text itself."""

    side: Literal["user", "model"]
    entity: str
    placeholder: str
    start: float
    end: float


class PrivacyLedgerEntry(_Model):
    schema_version: int = SCHEMA_VERSION
    conversation_id: str
    user_pseudonym: str
    run: str
    at: datetime
    deleted: list[dict[str, Any]]  # {"key", "versions"} of every deleted object
    redactions: list[RedactionSpan]
    muted_model_audio_s: float
    note: str = ""


class KbDocument(_Model):
    """One document of the operator's knowledge base (kb/)."""

    doc_id: str
    title: str
    text: str
    tags: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- judge

# The seven axes of the paper's judge, in its order. Content axes are scored by the content judge
# (an LLM); timing axes come from the deterministic detectors on word timestamps.
JUDGE_AXES = ("helpfulness", "safety", "factual_accuracy", "instruction_following", "tone",
              "interruption", "unresponsiveness")
CONTENT_AXES = JUDGE_AXES[:5]
TIMING_AXES = JUDGE_AXES[5:]
JudgeAxis = Literal["helpfulness", "safety", "factual_accuracy", "instruction_following", "tone",
                    "interruption", "unresponsiveness"]


class Turn(_Model):
    """A speaker turn segmented from word timestamps (`components/judge/timing.py`)."""

    side: Literal["user", "model"]
    index: int  # per side, in time order
    start: float
    end: float
    text: str  # the turn's words joined by spaces (redacted: placeholders like [PHONE] stay)
    first_word: int  # index range [first_word, last_word) into the transcript's words of that side
    last_word: int


class TimingEvent(_Model):
    """A deterministic timing finding, with its times (seconds from the conversation start)."""

    kind: Literal["interruption", "unresponsiveness"]
    user_turn: int  # the user turn it concerns
    reply: int | None = None  # index into ConversationJudgement.replies (None: no reply at all)
    user_start: float
    user_end: float
    model_start: float | None = None  # first non-backchannel model word of the reply
    # interruption: seconds the model started before the user's end (> tolerance);
    # unresponsiveness: seconds from the user's end to the model's start (or to the next user turn
    # / the end of the conversation when the model never spoke).
    seconds: float


class AxisScore(_Model):
    score: float = Field(ge=1, le=5)  # 1 (worst) .. 5 (best); probability-weighted for LM backends
    rationale: str = Field(max_length=600)
    # P(level) for levels 1..5 when the backend scores levels by probability, else None.
    level_probs: list[float] | None = None


class Passage(_Model):
    """A knowledge-base passage retrieved for a reply (the grounding of its judgement)."""

    passage_id: str  # "<doc_id>#<n>"
    doc_id: str
    text: str
    score: float  # cosine similarity to the query


class ReplyJudgement(_Model):
    """The judge's verdict on one model reply (or on a user turn the model left unanswered)."""

    index: int  # position in ConversationJudgement.replies
    user_turn: int | None  # the user turn it answers (None: a greeting before the user spoke)
    model_turn: int | None  # index into the model turns (None: the model said nothing)
    request: str  # the user's (redacted) words it answers
    text: str  # the reply's (redacted) words; "" when the model said nothing
    start: float  # first reply word; for no reply, the user's end of turn
    end: float
    user_end: float | None  # end of the user turn answered
    next_user_start: float | None  # start of the next user turn, None at the end
    # All seven axes; None = not judged (no content to judge, or stopped before this reply).
    scores: dict[str, AxisScore | None]
    problems: list[JudgeAxis] = Field(default_factory=list)  # axes at or below their threshold
    events: list[TimingEvent] = Field(default_factory=list)
    passages: list[Passage] = Field(default_factory=list)
    judged: bool  # False: after the stop point (nothing judged), see ConversationJudgement
    selected: bool = False  # chosen for a preference pair


class ConversationJudgement(_Model):
    schema_version: int = SCHEMA_VERSION
    conversation_id: str
    model_version: str  # the serving model that produced the replies
    backend: str  # "local-lm:<model id>", "openai:<model>@<host>", ...
    backend_version: str  # hash of backend, prompt/rubric and thresholds
    user_turns: list[Turn]
    model_turns: list[Turn]
    replies: list[ReplyJudgement]
    events: list[TimingEvent]
    stopped_after: int | None = None  # judging stopped after this reply (selection was full)
    failures: list[ItemError] = Field(default_factory=list)  # per-reply judge failures


class JudgedItem(ScrubbedItem):
    """A conversation the judge stage finished: the scrubbed item plus its judgement."""

    judgement: ObjectRef
    replies: int
    problems: dict[str, int]  # axis -> replies flagged
    selected: list[int]  # reply indices chosen for pairs
    judge_failures: int


# --------------------------------------------------------------------------- preference pairs

PairType = Literal["content", "interruption", "silence"]  # the paper's A, B, C
PAIR_TYPE_LETTER = {"content": "A", "interruption": "B", "silence": "C"}


class PairSide(_Model):
    """One side of a pair on the conversation's timeline (seconds)."""

    text: str  # written form; PII placeholders as scrub left them ([PHONE]); "" = no reply
    start: float  # for an empty side: where the chosen reply starts (same span, see tokenize)
    end: float
    words: list[WordStamp]  # timed words (rejected: as logged; chosen: as planned)
    source: Literal["logged", "moved", "composed", "rewritten", "none"]


class PreferencePair(_Model):
    """One preference pair: rejected = what the model did, chosen = what it should have done."""

    schema_version: int = SCHEMA_VERSION
    pair_id: str  # sha256 of (conversation, reply, type, judge version)[:24]
    conversation_id: str
    user_pseudonym: str
    type: PairType
    reply: int  # ReplyJudgement.index
    user_turn: int | None
    user_end: float | None
    next_user_start: float | None
    rejected: PairSide
    chosen: PairSide
    scores: dict[str, float | None]  # the reply's axis scores
    problems: list[str]  # the axes the chosen side fixes
    judge_backend: str
    judge_version: str
    serving_model_version: str  # the model that produced the rejected side (on-policy filter)
    passages: list[str] = Field(default_factory=list)  # passage ids that grounded the chosen side
    composer: str  # how the chosen side was made: "moved", "kb-compose-1", "llm:<model>", ...
    # Where it came from: transcript / judgement / model audio / model tokens refs, manifest ids.
    provenance: dict[str, Any]


class ResynthesisRecord(_Model):
    """What resynthesize put where, for one pair (pairs/<pair_id>/resynthesis.json)."""

    pair_id: str
    tts_user: str  # backend and voice id of the user side
    tts_model: str  # backend and voice id of the model side
    # {"turn", "start", "end", "fitted_start", "fitted_end", "length_scale"} per user turn
    user_turns: list[dict[str, Any]]
    user_speech_end: float  # measured end of the resynthesised user turn the reply answers
    chosen: PairSide  # the chosen side as placed (word times of the synthesised speech)
    rejected: PairSide  # as logged, or as resynthesised (rejected_audio="resynthesized")
    rejected_audio: Literal["logged", "resynthesized"]
    fake_values: dict[str, int]  # placeholder -> count replaced by a typed fake value
    duration_s: float


class ResynthesizedPair(_Model):
    pair: PreferencePair
    user_audio: ObjectRef
    chosen_model_audio: ObjectRef
    rejected_model_audio: ObjectRef
    record: ObjectRef
    model_tokens: ObjectRef | None  # the logged tokens (rejected side); None: re-encode


PAIRS_PER_SHARD = 64


class PairDatasetManifest(_Model):
    """A pair-tensor dataset version: sharded, streamable, immutable.

    Each shard (npz) holds, per pair i: ``chosen_<i>`` and ``rejected_<i>`` int32 [1 + 2q, T_i]
    (row 0 text, then q model codebooks, then q user codebooks; undelayed, time-aligned, NO_TOKEN
    where there is no input; both sides the same shape, with the same user rows) and ``windows``
    int32 [n, 4] = chosen lo, hi, rejected lo, hi (frames, [lo, hi)), plus ``pair_ids`` and
    ``types`` (str [n]). The text of a side is scored inside its window. Reader and writer:
    components/streams/pairset.py."""

    schema_version: int = SCHEMA_VERSION
    # "pairs-" + sha256 of (schema version, input manifest, shard keys and hashes, settings)[:24]
    version: str
    input_manifest_id: str
    tokenizer_hash: str
    codec_hash: str
    num_codebooks: int
    context_frames: int
    trailing_pad_frames: int
    shards: list[str]  # object keys
    pairs: int
    counts: dict[str, int]  # by pair type
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
