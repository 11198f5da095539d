"""Ground truth of one simulated conversation — what really happened, for audits and evaluation.

Stored ONLY in the ground-truth bucket (``cfg.storage.groundtruth_bucket``) at
``Keys.groundtruth(conversation_id)``; no pipeline stage reads it. Times are seconds from the
start of the conversation's audio; a turn's start/end are its first word's start and last
word's end (the speech, not the clip around it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.contract import ObjectRef

from components.contract import Keys

GT_SCHEMA_VERSION = 1
GROUNDTRUTH_PREFIX = Keys.groundtruth("x").rsplit("/", 1)[0] + "/"  # "conversations/"

# One per judge axis: factual accuracy, safety, helpfulness, tone, instruction following,
# interruption, unresponsiveness.
ProblemKind = Literal["wrong_fact", "unsafe_compliance", "unhelpful", "off_tone",
                      "instruction_missed", "interruption", "silence"]
PROBLEM_KINDS: tuple[str, ...] = ("wrong_fact", "unsafe_compliance", "unhelpful", "off_tone",
                                  "instruction_missed", "interruption", "silence")
RequestKind = Literal["fact", "unsafe", "benign_edgy", "small_talk", "instruction"]
UserTurnKind = Literal["request", "nudge", "closing"]
ModelTurnKind = Literal["greeting", "reply", "closing"]
# Which reply variant was said: correct/wrong (fact), refusal/compliance (unsafe),
# helpful/over_refusal (benign_edgy), compliant/missed (instruction), polite/rude (small talk),
# unhelpful, off_tone (the good content said rudely), greeting, closing.
# On-policy replies (components/simulate/live.py) add "other" (the reply's content matches
# neither reference) and "none" (the model said nothing in reply).
ReplyVariant = Literal["correct", "wrong", "refusal", "compliance", "helpful", "over_refusal",
                       "compliant", "missed", "polite", "rude", "unhelpful", "off_tone",
                       "greeting", "closing", "other", "none"]
PiiType = Literal["name", "phone", "email", "address", "card"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GtWord(_Model):
    word: str
    start: float
    end: float


class UserTurn(_Model):
    index: int
    kind: UserTurnKind
    request_kind: RequestKind | None = None  # for kind="request"
    item_id: str | None = None  # fact id or request id from world.py
    text: str  # EXACT text the voice spoke (spoken forms: "four one five, five five five, ...")
    written_text: str  # the same with PII and numbers in written form ("415-555-0142")
    start: float
    end: float
    words: list[GtWord]  # spoken words with their times
    pii: list[int] = Field(default_factory=list)  # indices into GroundTruth.pii
    # The turn's sentences when it was said as several (tts.speak_parts), spoken forms in order;
    # None when it was one utterance. Lets a corpus builder re-render exactly the same audio.
    parts: list[str] | None = None
    # On-policy conversations (live.py) only:
    frames: list[int] | None = None  # [first frame, end frame) of the streamed utterance
    barge_in: bool = False  # the user started this turn while the model was speaking
    cut_reply: bool = False  # ... because the model's reply ran past policy.max_reply_s


class ModelTurn(_Model):
    index: int
    kind: ModelTurnKind
    responds_to: int | None = None  # user turn index this reply answers
    request_kind: RequestKind | None = None
    item_id: str | None = None
    variant: ReplyVariant
    problems: list[ProblemKind] = Field(default_factory=list)  # planted problems; [] = fine
    text: str  # written form, as in model_text.json
    spoken_text: str
    good_text: str | None = None  # the problem-free reply to the same request (for evaluation)
    start: float
    end: float
    latency_s: float | None = None  # start minus the end of the user turn answered (< 0: overlap)
    nudged: bool = False  # the user had to ask "are you there?" before this reply came
    words: list[GtWord]  # written tokens with their times (what model_text.json carries)
    echoed_pii: list[int] = Field(default_factory=list)  # indices into GroundTruth.pii
    # On-policy replies (live.py): labels read from the model's frames, not from a script. See
    # live.py's module docstring for the exact definitions. None = not applicable / undecided.
    frames: list[int] | None = None  # [first frame, end frame) of the reply's words
    answer_correct: bool | None = None  # fact: the fact's answer is in the reply (written form)
    answer_wrong: bool | None = None  # fact: the world's planted wrong answer is in the reply
    refused: bool | None = None  # unsafe / benign_edgy: closer to the refusal than to compliance
    matches_good: bool | None = None  # request kinds with a good/bad reference: closer to good
    interruption: bool | None = None  # the first word started > tolerance before the user's end
    silence: bool | None = None  # no word within the threshold after the user's end, or nudged


class Backchannel(_Model):
    text: str
    start: float
    end: float
    during_user_turn: int


class PlantedPii(_Model):
    type: PiiType
    written: str  # "415-555-0142", "maria.lopez@example.com", "42 Elm Street", "4111 1111 ..."
    spoken: str  # what the voice said: "four one five, five five five, ..."
    user_turn: int
    start: float  # span of the value in the USER audio
    end: float
    echoed: bool = False  # the model repeated it in its reply
    echo_turn: int | None = None  # model turn index
    echo_written: str | None = None  # what the model's text carries ("Maria" for a name)
    echo_start: float | None = None  # span of the echo in the MODEL audio (scrub must mute it)
    echo_end: float | None = None


class GroundTruth(_Model):
    schema_version: int = GT_SCHEMA_VERSION
    conversation_id: str
    batch: str
    seed: int
    index: int
    world_version: str
    config_fingerprint: str
    user_id: str  # raw id, as in metadata.json
    user_pseudonym: str | None = None
    user_index: int
    consent: bool
    model_version: str
    started_at: datetime
    sample_rate: int
    audio_layout: Literal["stereo", "separate"]
    duration_s: float
    user_voice: str
    model_voice: str
    user_turns: list[UserTurn]
    model_turns: list[ModelTurn]
    backchannels: list[Backchannel] = Field(default_factory=list)
    pii: list[PlantedPii] = Field(default_factory=list)
    # The raw objects as written (pinned versions): the conversation's entry in its raw manifest.
    raw_objects: dict[str, ObjectRef] = Field(default_factory=dict)
    replica_of: str | None = None  # set by replicate_corpus on copies
    # On-policy conversations (live.py): a model served the user (its tokens are in the raw
    # objects), and what served it: model version tag, identity hashes, sampling and user knobs.
    policy: bool = False
    serving: dict[str, Any] | None = None

    def problems(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for turn in self.model_turns:
            for p in turn.problems:
                counts[p] = counts.get(p, 0) + 1
        return counts


# ----------------------------------------------------------------------------- readers (audits)


def iter_groundtruth(cfg, conversation_ids: list[str] | None = None) -> Iterator[GroundTruth]:
    """Ground truth of the given conversations (those that have one), or of every conversation
    in the ground-truth bucket. `cfg` is the platform Config."""
    from components.common.storage import ObjectStore

    store = ObjectStore.from_config(cfg.storage, bucket=cfg.storage.groundtruth_bucket)
    if conversation_ids is None:
        keys: Iterable[str] = (i.key for i in store.list(GROUNDTRUTH_PREFIX) if i.key.endswith(".json"))
    else:
        keys = (Keys.groundtruth(cid) for cid in conversation_ids)
    for key in keys:
        if conversation_ids is not None and not store.exists(key):
            continue
        yield GroundTruth.model_validate(store.get_json(key))


def load_planted_pii(cfg, conversation_ids: list[str] | None = None) -> list[tuple[str, str]]:
    """Every planted PII value as (type, written form), deduplicated: what the user said, and
    what the model echoed when it differs (a name is echoed as the first name only)."""
    found: dict[tuple[str, str], None] = {}
    for gt in iter_groundtruth(cfg, conversation_ids):
        for p in gt.pii:
            found[(p.type, p.written)] = None
            if p.echoed and p.echo_written and p.echo_written != p.written:
                found[(p.type, p.echo_written)] = None
    return list(found)
