"""A small, contract-valid pipeline chain written straight into a test bucket.

The stages after scrub (validate, features, mix, erase, retention) read what scrub → judge →
pairs → resynthesize → tokenize leave behind. Running those stages for real costs minutes (TTS,
codec, judge model); their outputs are fully described by the contract, so this module writes them
through the contract's own models, Keys builders, ManifestWriter and the pairs-dataset writer —
the same objects, markers and manifests the real stages write, for a handful of users whose
conversations, replies and pairs are known exactly.

Each conversation has two exchanges: a user question, then the model's reply. Every reply becomes
one pair; pair types cycle through ``pair_types`` across a user's replies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from components.common.audio import encode_wav
from components.common.config import Config
from components.common.consent import ConsentRegistry
from components.common.privacy import load_pseudonym_key, pseudonymise
from components.common.stagekit import ManifestWriter
from components.common.storage import ObjectStore
from components.contract import (
    JUDGE_AXES,
    MODEL_SAMPLE_RATE,
    SYNTHETIC_SPEECH_METADATA,
    AxisScore,
    ConversationJudgement,
    ItemResult,
    JudgedItem,
    Keys,
    ObjectRef,
    PairSide,
    PreferencePair,
    PrivacyLedgerEntry,
    ReplyJudgement,
    ResynthesisRecord,
    ResynthesizedPair,
    ScrubbedItem,
    TimingEvent,
    Transcript,
    Turn,
    WordStamp,
)
from components.streams.pairset import PairTensors, write_dataset

START = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
JUDGE_KEY = "local-test-000000000000"
NUM_CODEBOOKS = 4
FRAMES = 48  # per pair tensor (12.5 Hz: 3.84 s)
TEXT_VOCAB = 1000
AUDIO_CARD = 2048

# (user words, model reply words, chosen reply words) per exchange.
EXCHANGES = [
    ("what is the capital of france", "berlin is the capital", "paris is the capital of france"),
    ("how do i reset my router", "i cannot help", "hold the reset button for ten seconds"),
    ("tell me about the opening hours", "we are open sometimes",
     "we are open from nine to five on weekdays"),
]


@dataclass
class Chain:
    cfg: Config
    users: dict[str, str]  # raw user id -> pseudonym
    conversations: dict[str, str]  # conversation id -> pseudonym
    pairs: dict[str, PreferencePair]
    manifests: dict[str, str]  # stage -> manifest id
    dataset_version: str
    conversation_end: dict[str, datetime] = field(default_factory=dict)
    tokenizer_hash: str = ""
    codec_hash: str = ""

    def conversations_of(self, raw_user: str) -> list[str]:
        pseudonym = self.users[raw_user]
        return [c for c, p in self.conversations.items() if p == pseudonym]

    def pairs_of(self, raw_user: str) -> list[str]:
        pseudonym = self.users[raw_user]
        return [pid for pid, p in self.pairs.items() if p.user_pseudonym == pseudonym]


def _words(text: str, start: float, end: float) -> list[WordStamp]:
    tokens = text.split()
    step = (end - start) / max(len(tokens), 1)
    return [WordStamp(word=w, start=round(start + i * step, 3), end=round(start + (i + 1) * step - 0.02, 3))
            for i, w in enumerate(tokens)]


def _turn(side: str, index: int, words: list[WordStamp], first: int) -> Turn:
    return Turn(side=side, index=index, start=words[0].start, end=words[-1].end,
                text=" ".join(w.word for w in words), first_word=first, last_word=first + len(words))


def _marker(store: ObjectStore, stage: str, input_id: str | None, item_id: str,
            output: dict[str, Any]) -> None:
    if input_id:
        store.put_json(Keys.item_state(stage, input_id, item_id),
                       ItemResult(item=item_id, status="done", output=output).model_dump(mode="json"))


def _wav(store: ObjectStore, key: str, seed: int, metadata: dict[str, str] | None = None) -> ObjectRef:
    audio = np.random.default_rng(seed).normal(0, 0.01, MODEL_SAMPLE_RATE // 10).astype(np.float32)
    data = encode_wav(audio, MODEL_SAMPLE_RATE)
    version = store.put_bytes(key, data, content_type="audio/wav", metadata=metadata)
    return ObjectRef(key=key, version_id=version, size=len(data))


def _tensors(pair_id: str, pair_type: str, seed: int) -> PairTensors:
    rng = np.random.default_rng(seed)
    rows = 1 + 2 * NUM_CODEBOOKS
    rejected = rng.integers(0, 200, size=(rows, FRAMES), dtype=np.int32)
    rejected[0] = rng.integers(0, 100, size=FRAMES)
    chosen = rejected.copy()
    chosen[0, 24:40] = (rejected[0, 24:40] + 1) % 100  # the reply differs inside its window
    chosen[1:1 + NUM_CODEBOOKS, 24:40] = (rejected[1:1 + NUM_CODEBOOKS, 24:40] + 7) % 200
    return PairTensors(pair_id=pair_id, type=pair_type, chosen=chosen, rejected=rejected,
                       windows=np.array([24, 40, 20, 40], dtype=np.int32))


def _sides(pair_type: str, request_end: float, request: str, rejected_text: str,
           chosen_text: str) -> tuple[PairSide, PairSide, list[str]]:
    if pair_type == "interruption":
        rejected = PairSide(text=rejected_text, start=request_end - 0.8, end=request_end + 0.8,
                            words=_words(rejected_text, request_end - 0.8, request_end + 0.8),
                            source="logged")
        chosen = PairSide(text=rejected_text, start=request_end + 0.4, end=request_end + 2.0,
                          words=_words(rejected_text, request_end + 0.4, request_end + 2.0),
                          source="moved")
        return rejected, chosen, ["interruption"]
    if pair_type == "silence":
        rejected = PairSide(text="", start=request_end + 0.4, end=request_end + 2.4, words=[],
                            source="none")
        chosen = PairSide(text=chosen_text, start=request_end + 0.4, end=request_end + 2.4,
                          words=_words(chosen_text, request_end + 0.4, request_end + 2.4),
                          source="composed")
        return rejected, chosen, ["unresponsiveness"]
    rejected = PairSide(text=rejected_text, start=request_end + 0.5, end=request_end + 2.0,
                        words=_words(rejected_text, request_end + 0.5, request_end + 2.0),
                        source="logged")
    chosen = PairSide(text=chosen_text, start=request_end + 0.5, end=request_end + 2.5,
                      words=_words(chosen_text, request_end + 0.5, request_end + 2.5),
                      source="rewritten")
    return rejected, chosen, ["factual_accuracy", "helpfulness"]


def _scores(problems: list[str]) -> dict[str, AxisScore | None]:
    return {axis: AxisScore(score=1.5 if axis in problems else 4.5, rationale="test")
            for axis in JUDGE_AXES}


def write_chain(cfg: Config, *, users: dict[str, int] | None = None, seed: int = 0,
                started_at: datetime = START, serving_model_version: str = "duplexalign-moshi/1",
                tokenizer_hash: str = "tok-test", codec_hash: str = "codec-test",
                pair_types: tuple[str, ...] = ("content", "interruption", "silence"),
                consent: bool = True,
                exchanges: list[tuple[str, str, str]] | None = None) -> Chain:
    """Write the chain for ``users`` (raw id → number of conversations) into cfg's bucket; every
    user is granted consent in cfg's registry when ``consent``. ``exchanges``: the (user words,
    reply, chosen reply) to cycle through instead of EXCHANGES (a test plants a defect in one).
    Returns what was written."""
    users = users if users is not None else {"alice": 2, "bob": 2, "carol": 1}
    exchanges = exchanges if exchanges is not None else EXCHANGES
    store = ObjectStore.from_config(cfg.storage)
    store.ensure_bucket(versioning=True)
    key = load_pseudonym_key(cfg.scrub, create=True)
    pseudonyms = {raw: pseudonymise(raw, key) for raw in users}
    if consent:
        with ConsentRegistry.from_dsn(cfg.consent.dsn) as registry:
            registry.migrate()
            for raw, pseudonym in pseudonyms.items():
                registry.set_consent(pseudonym, True, at=started_at - timedelta(days=30),
                                     source="test")

    scrub = ManifestWriter(store, "scrub", None)
    scrubbed: list[ScrubbedItem] = []
    conversations: dict[str, str] = {}
    ends: dict[str, datetime] = {}
    n = 0
    for u, (raw, count) in enumerate(users.items()):
        for k in range(count):
            cid = f"conv-{seed}-{raw}-{k}"
            exchange = exchanges[(u + k) % len(exchanges)]
            user_words = _words(exchange[0], 0.5, 2.5) + _words(exchange[0], 6.0, 8.0)
            model_words = _words(exchange[1], 3.0, 4.5) + _words(exchange[1], 8.6, 10.0)
            duration = 12.0
            # every other conversation starts on a fraction of a second, as logs do: timestamps
            # with and without microseconds then meet in one column (ISO strings of both shapes)
            begin = started_at + timedelta(hours=n, milliseconds=250 * (n % 2))
            n += 1
            conversations[cid] = pseudonyms[raw]
            ends[cid] = begin + timedelta(seconds=duration)
            transcript = Transcript(conversation_id=cid, redacted=True, asr_model="tiny.en",
                                    duration_s=duration, user_words=user_words,
                                    model_words=model_words)
            t_ref = ObjectRef(key=Keys.transcript(cid), version_id=store.put_json(
                Keys.transcript(cid), transcript.model_dump(mode="json")))
            a_ref = _wav(store, Keys.conversation_audio(cid), seed * 1000 + n)
            metadata = {"conversation_id": cid, "user_pseudonym": pseudonyms[raw],
                        "model_version": serving_model_version,
                        "started_at": begin.isoformat(), "duration_s": duration}
            m_ref = ObjectRef(key=Keys.conversation_metadata(cid), version_id=store.put_json(
                Keys.conversation_metadata(cid), metadata))
            item = ScrubbedItem(conversation_id=cid, user_pseudonym=pseudonyms[raw],
                                model_version=serving_model_version, started_at=begin,
                                duration_s=duration, transcript=t_ref, model_audio=a_ref,
                                metadata=m_ref, redactions={})
            scrubbed.append(item)
            scrub.add_item(item.model_dump(mode="json"))
            store.put_json(Keys.privacy_ledger(cid, "run-test"), PrivacyLedgerEntry(
                conversation_id=cid, user_pseudonym=pseudonyms[raw], run="run-test", at=begin,
                deleted=[{"key": f"raw/batch/{cid}/user.wav", "versions": 1}], redactions=[],
                muted_model_audio_s=0.0).model_dump(mode="json"))
    scrub_id = scrub.close({"test_chain": True}).manifest_id

    judge = ManifestWriter(store, "judge", scrub_id)
    judged: list[tuple[ScrubbedItem, ConversationJudgement]] = []
    type_counter: dict[str, int] = {}
    for item in scrubbed:
        transcript = Transcript.model_validate(store.get_json(item.transcript.key))
        uw, mw = transcript.user_words, transcript.model_words
        half_u, half_m = len(uw) // 2, len(mw) // 2
        user_turns = [_turn("user", 0, uw[:half_u], 0), _turn("user", 1, uw[half_u:], half_u)]
        model_turns = [_turn("model", 0, mw[:half_m], 0), _turn("model", 1, mw[half_m:], half_m)]
        replies: list[ReplyJudgement] = []
        events: list[TimingEvent] = []
        owner = item.user_pseudonym
        for r in range(2):
            index = type_counter.get(owner, 0)
            type_counter[owner] = index + 1
            pair_type = pair_types[index % len(pair_types)]
            problems = {"content": ["factual_accuracy", "helpfulness"],
                        "interruption": ["interruption"],
                        "silence": ["unresponsiveness"]}[pair_type]
            replies.append(ReplyJudgement(
                index=r, user_turn=r, model_turn=r, request=user_turns[r].text,
                text=model_turns[r].text, start=model_turns[r].start, end=model_turns[r].end,
                user_end=user_turns[r].end,
                next_user_start=user_turns[1].start if r == 0 else None,
                scores=_scores(problems), problems=problems, judged=True, selected=True))
        judgement = ConversationJudgement(
            conversation_id=item.conversation_id, model_version=item.model_version,
            backend="local-lm:test", backend_version="test", user_turns=user_turns,
            model_turns=model_turns, replies=replies, events=events)
        jkey = Keys.judgement(item.conversation_id, JUDGE_KEY)
        j_ref = ObjectRef(key=jkey, version_id=store.put_json(jkey, judgement.model_dump(mode="json")))
        out = JudgedItem(**item.model_dump(), judgement=j_ref, replies=2,
                         problems={p: 1 for r in replies for p in r.problems}, selected=[0, 1],
                         judge_failures=0)
        judge.add_item(out.model_dump(mode="json"))
        _marker(store, "judge", scrub_id, item.conversation_id, out.model_dump(mode="json"))
        digest = hashlib.sha256(f"{item.conversation_id}:{seed}".encode()).hexdigest()
        store.put_json(Keys.judge_cache(digest), {
            "namespace": "judge-test", "digest": digest, "answer": {"text": replies[0].text},
            "created": 0, "conversation_id": item.conversation_id})
        judged.append((item, judgement))
    judge_id = judge.close({"judge_key": JUDGE_KEY}).manifest_id

    pairs_w = ManifestWriter(store, "pairs", judge_id)
    pairs: dict[str, PreferencePair] = {}
    for item, judgement in judged:
        for reply in judgement.replies:
            pair_type = {"factual_accuracy": "content", "interruption": "interruption",
                         "unresponsiveness": "silence"}[reply.problems[0]]
            exchange = next(e for e in exchanges if e[0] == reply.request)
            rejected, chosen, fixes = _sides(pair_type, reply.user_end or 0.0, reply.request,
                                             exchange[1], exchange[2])
            pair_id = hashlib.sha256(f"{item.conversation_id}:{reply.index}:{pair_type}:"
                                     f"{seed}".encode()).hexdigest()[:24]
            pair = PreferencePair(
                pair_id=pair_id, conversation_id=item.conversation_id,
                user_pseudonym=item.user_pseudonym, type=pair_type, reply=reply.index,
                user_turn=reply.user_turn, user_end=reply.user_end,
                next_user_start=reply.next_user_start, rejected=rejected, chosen=chosen,
                scores={a: (s.score if s else None) for a, s in reply.scores.items()},
                problems=fixes, judge_backend="local-lm:test", judge_version=JUDGE_KEY,
                serving_model_version=item.model_version, composer="test",
                provenance={"transcript": item.transcript.model_dump(),
                            "judgement": judgement.conversation_id,
                            "judge_manifest": judge_id})
            pairs[pair_id] = pair
            pairs_w.add_item(pair.model_dump(mode="json"))
            _marker(store, "pairs", judge_id, pair_id, pair.model_dump(mode="json"))
    pairs_id = pairs_w.close({"by_type": {}}).manifest_id

    resynth = ManifestWriter(store, "resynthesize", pairs_id)
    tensors: list[PairTensors] = []
    tokenize_items: list[dict[str, Any]] = []
    for i, (pair_id, pair) in enumerate(pairs.items()):
        user_turn = {"turn": pair.user_turn, "start": (pair.user_end or 0.0) - 2.0,
                     "end": pair.user_end, "fitted_start": (pair.user_end or 0.0) - 2.0,
                     "fitted_end": pair.user_end, "length_scale": 1.0}
        record = ResynthesisRecord(pair_id=pair_id, tts_user="piper:test", tts_model="piper:test",
                                   user_turns=[user_turn], user_speech_end=pair.user_end or 0.0,
                                   chosen=pair.chosen, rejected=pair.rejected,
                                   rejected_audio="logged", fake_values={}, duration_s=12.0)
        rkey = Keys.pair_object(pair_id, "resynthesis.json")
        r_ref = ObjectRef(key=rkey, version_id=store.put_bytes(
            rkey, record.model_dump_json().encode(), content_type="application/json"))
        out = ResynthesizedPair(
            pair=pair,
            user_audio=_wav(store, Keys.pair_object(pair_id, "user.wav"), i,
                            dict(SYNTHETIC_SPEECH_METADATA)),
            chosen_model_audio=_wav(store, Keys.pair_object(pair_id, "chosen_model.wav"), i + 1),
            rejected_model_audio=_wav(store, Keys.pair_object(pair_id, "rejected_model.wav"), i + 2),
            record=r_ref, model_tokens=None)
        resynth.add_item(out.model_dump(mode="json"))
        _marker(store, "resynthesize", pairs_id, pair_id, out.model_dump(mode="json"))
        tensors.append(_tensors(pair_id, pair.type, seed * 1000 + i))
        tokenize_items.append({"pair_id": pair_id, "conversation_id": pair.conversation_id,
                               "type": pair.type, "frames": FRAMES, "offset": 0,
                               "windows": {"chosen": [24, 40], "rejected": [20, 40]},
                               "rejected_source": "logged", "settings": "test"})
    resynth_id = resynth.close({}).manifest_id

    dataset = write_dataset(store, tensors, input_manifest_id=resynth_id,
                            tokenizer_hash=tokenizer_hash, codec_hash=codec_hash,
                            num_codebooks=NUM_CODEBOOKS, context_frames=FRAMES,
                            trailing_pad_frames=0, pairs_per_shard=4)
    tokenize = ManifestWriter(store, "tokenize", resynth_id)
    for out in tokenize_items:
        tokenize.add_item(out)
        _marker(store, "tokenize", resynth_id, out["pair_id"], out)
    tokenize_id = tokenize.close({"pairs_dataset": dataset.version,
                                  "pairs_dataset_pairs": dataset.pairs,
                                  "pairs_by_type": dataset.counts}).manifest_id
    report = "<html><body>" + "".join(
        f"<p>{pid} {p.conversation_id}: {p.chosen.text}</p>" for pid, p in pairs.items()) + \
        "</body></html>"
    store.put_bytes(Keys.report("pairs", tokenize_id, "pairs.html"), report.encode(),
                    content_type="text/html")
    return Chain(cfg=cfg, users=pseudonyms, conversations=conversations, pairs=pairs,
                 manifests={"scrub": scrub_id, "judge": judge_id, "pairs": pairs_id,
                            "resynthesize": resynth_id, "tokenize": tokenize_id},
                 dataset_version=dataset.version, conversation_end=ends,
                 tokenizer_hash=tokenizer_hash, codec_hash=codec_hash)
