"""The gate's tables, built from the chain of one tokenize manifest through the contract.

Walking ``manifest_chain(store, tokenize_manifest_id)``:

* scrub items (ScrubbedItem) → each conversation's redacted Transcript (pinned version):
  ``transcripts`` (one row per word) and ``conversations`` (one row per conversation);
* judge items (JudgedItem) → ConversationJudgement: ``judgements`` (one row per judged reply ×
  axis);
* pairs items (PreferencePair) + resynthesize items (ResynthesizedPair → ResynthesisRecord):
  ``pairs`` (one row per pair OF THE DATASET — what would train: type, texts, chosen span, its
  overlap with the user's speech); the texts of every pair made go to ``texts``;
* the pairs dataset the tokenize manifest names (PairDataset, streamed shard by shard):
  ``tensors`` (one summary row per pair: windows, token-id ranges, sides differ, user rows
  shared), ``identity`` (every claim of the dataset's tokenizer / codec: the dataset manifest, the
  tokenize run, the logged model tokens of each pair in it, the champion's registry tags) and
  ``mix`` (pairs per type);
* ``texts``: every stored text of the above (transcript sides, judged requests, replies and
  rationales, both sides of every pair and record), for the PII expectations.

Each builder below takes contract objects, so tests can build a table from crafted objects too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.common.stagekit import iter_items, manifest_chain
from components.common.storage import ObjectStore
from components.contract import (
    ConversationJudgement,
    Keys,
    Manifest,
    ModelTokens,
    ObjectRef,
    PairSide,
    PreferencePair,
    ResynthesisRecord,
    ResynthesizedPair,
    ScrubbedItem,
    Transcript,
)
from components.streams.pairset import PAIR_TYPES, PairDataset, PairTensors
from components.validate.suites import TABLE_COLUMNS

Row = dict[str, Any]


@dataclass
class ChainTables:
    """The tables of one tokenize manifest's chain, and what they were read from."""

    tables: dict[str, pd.DataFrame]
    tokenize_manifest_id: str
    dataset_version: str
    manifests: dict[str, str]  # stage -> manifest id
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why


def frame(table: str, rows: Iterable[Row]) -> pd.DataFrame:
    """A table with at least its suite's columns (in that order), even when empty."""
    df = pd.DataFrame(list(rows))
    for column in TABLE_COLUMNS[table]:
        if column not in df.columns:
            df[column] = pd.Series(dtype=object)
    extra = [c for c in df.columns if c not in TABLE_COLUMNS[table]]
    return df[list(TABLE_COLUMNS[table]) + extra]


# ----------------------------------------------------------------------------- builders


def transcript_rows(t: Transcript) -> list[Row]:
    return [{"conversation_id": t.conversation_id, "side": side, "index": i, "word": w.word,
             "start": float(w.start), "end": float(w.end), "duration_s": float(t.duration_s)}
            for side, words in (("user", t.user_words), ("model", t.model_words))
            for i, w in enumerate(words)]


def conversation_row(t: Transcript) -> Row:
    return {"conversation_id": t.conversation_id, "duration_s": float(t.duration_s),
            "user_words": len(t.user_words), "model_words": len(t.model_words)}


def transcript_texts(t: Transcript) -> list[Row]:
    return [{"source": "transcript", "owner": t.conversation_id, "field": side,
             "text": " ".join(w.word for w in words)}
            for side, words in (("user", t.user_words), ("model", t.model_words))]


def judgement_rows(j: ConversationJudgement) -> list[Row]:
    return [{"conversation_id": j.conversation_id, "reply": r.index, "axis": axis,
             "score": float(score.score)}
            for r in j.replies if r.judged
            for axis, score in r.scores.items() if score is not None]


def judgement_texts(j: ConversationJudgement) -> list[Row]:
    rows: list[Row] = []
    for r in j.replies:
        owner = f"{j.conversation_id}#r{r.index}"
        rows.append({"source": "judgement", "owner": owner, "field": "request", "text": r.request})
        rows.append({"source": "judgement", "owner": owner, "field": "reply", "text": r.text})
        for axis, score in r.scores.items():
            if score is not None and score.rationale:
                rows.append({"source": "judgement", "owner": owner, "field": f"rationale:{axis}",
                             "text": score.rationale})
    for turn in [*j.user_turns, *j.model_turns]:
        rows.append({"source": "judgement", "owner": j.conversation_id,
                     "field": f"{turn.side}_turn:{turn.index}", "text": turn.text})
    return rows


def _spans(side: PairSide) -> list[tuple[float, float]]:
    return [(w.start, w.end) for w in side.words] or [(side.start, side.end)]


def _overlap(spans: list[tuple[float, float]], speech: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e, se) - max(s, ss)) for s, e in spans for ss, se in speech)


def user_speech(pair: PreferencePair,
                record: ResynthesisRecord | None) -> list[tuple[float, float]]:
    """The user's speech around the reply: the resynthesised turns as fitted (record), plus the
    next turn's logged start onwards when the record does not hold it; without a record, from
    the pair: up to the end of the turn answered, and from the next turn's start on."""
    spans: list[tuple[float, float]] = []
    if record is not None and record.user_turns:
        for turn in record.user_turns:
            start = turn.get("fitted_start", turn.get("start"))
            end = turn.get("fitted_end", turn.get("end"))
            if start is not None and end is not None:
                spans.append((float(start), float(end)))
        if pair.next_user_start is not None and not any(
                s >= pair.next_user_start - 0.5 for s, _ in spans):
            spans.append((float(pair.next_user_start), float("inf")))
        return spans
    if pair.user_end is not None:
        spans.append((float("-inf"), float(pair.user_end)))
    if pair.next_user_start is not None:
        spans.append((float(pair.next_user_start), float("inf")))
    return spans


def pair_row(pair: PreferencePair, record: ResynthesisRecord | None,
             conversation_s: float | None) -> Row:
    """One pair (as resynthesize placed it, when it did). ``chosen_overlap_s``: the chosen
    reply's overlap with user speech that starts before it (the turn it answers, earlier turns);
    ``chosen_overrun_s``: with user speech that starts after it (it runs into the next turn).
    ``conversation_s``: the resynthesised timeline's length when there is a record (it may extend
    past the conversation), else the conversation's duration."""
    chosen = record.chosen if record is not None else pair.chosen
    rejected = record.rejected if record is not None else pair.rejected
    spans = _spans(chosen) if (chosen.words or chosen.source != "none") else []
    speech = user_speech(pair, record)
    begin = min((s for s, _ in spans), default=chosen.start)
    before = [(s, e) for s, e in speech if s < begin]
    after = [(s, e) for s, e in speech if s >= begin]
    if record is not None:
        conversation_s = record.duration_s
    return {"pair_id": pair.pair_id, "conversation_id": pair.conversation_id,
            "user_pseudonym": pair.user_pseudonym, "type": pair.type,
            "serving_model_version": pair.serving_model_version,
            "chosen_text": chosen.text, "rejected_text": rejected.text,
            "chosen_start": float(chosen.start), "chosen_end": float(chosen.end),
            "rejected_start": float(rejected.start), "rejected_end": float(rejected.end),
            "conversation_s": conversation_s,
            "chosen_overlap_s": round(_overlap(spans, before), 6),
            "chosen_overrun_s": round(_overlap(spans, after), 6),
            "resynthesized": record is not None}


def pair_texts(pair: PreferencePair, record: ResynthesisRecord | None) -> list[Row]:
    rows = [{"source": "pair", "owner": pair.pair_id, "field": side, "text": s.text}
            for side, s in (("chosen", pair.chosen), ("rejected", pair.rejected))]
    if record is not None:
        rows += [{"source": "resynthesis", "owner": pair.pair_id, "field": side, "text": s.text}
                 for side, s in (("chosen", record.chosen), ("rejected", record.rejected))]
    return rows


def tensor_row(p: PairTensors, num_codebooks: int, known_pairs: set[str] | None) -> Row:
    q = p.num_codebooks
    w = np.asarray(p.windows).astype(int)
    lo, hi = int(min(w[0], w[2])), int(max(w[1], w[3]))
    lo, hi = max(lo, 0), min(hi, p.frames)
    sides_differ = bool(hi > lo and not np.array_equal(p.chosen[:, lo:hi], p.rejected[:, lo:hi]))
    text = np.concatenate([p.chosen[0], p.rejected[0]])
    audio = np.concatenate([p.chosen[1:].ravel(), p.rejected[1:].ravel()])
    return {"pair_id": p.pair_id, "type": p.type, "frames": p.frames,
            "rows": int(p.chosen.shape[0]), "expected_rows": 1 + 2 * int(num_codebooks),
            "chosen_lo": int(w[0]), "chosen_hi": int(w[1]), "rejected_lo": int(w[2]),
            "rejected_hi": int(w[3]),
            "text_min": int(text.min()) if text.size else 0,
            "text_max": int(text.max()) if text.size else 0,
            "audio_min": int(audio.min()) if audio.size else 0,
            "audio_max": int(audio.max()) if audio.size else 0,
            "sides_differ": sides_differ,
            "user_rows_equal": bool(p.chosen.shape == p.rejected.shape and np.array_equal(
                p.chosen[1 + q:], p.rejected[1 + q:])),
            "in_pairs": known_pairs is None or p.pair_id in known_pairs}


def mix_rows(counts: Counter[str]) -> list[Row]:
    types = list(PAIR_TYPES) + sorted(set(counts) - set(PAIR_TYPES))
    return [{"type": t, "pairs": int(counts.get(t, 0))} for t in types]


# ----------------------------------------------------------------------------- the chain


def _get_model(store: ObjectStore, ref: ObjectRef, model: Any) -> Any:
    return model.model_validate(store.get_json(ref.key, version_id=ref.version_id))


def _items(store: ObjectStore, chain: dict[str, Manifest], stage: str) -> Iterator[dict[str, Any]]:
    if stage in chain:
        yield from iter_items(store, chain[stage])


def build_tables(store: ObjectStore, tokenize_manifest_id: str, *,
                 champion: tuple[str, str] | None = None) -> ChainTables:
    """Every table of the gate for the chain ending at ``tokenize_manifest_id``.

    ``champion``: (tokenizer hash, codec hash) of the model training starts from, added to the
    identity claims (None: not compared)."""
    chain = manifest_chain(store, tokenize_manifest_id)
    tokenize = chain.get("tokenize")
    if tokenize is None or tokenize.manifest_id != tokenize_manifest_id:
        raise ValueError(f"{tokenize_manifest_id} is not a tokenize manifest")
    dataset_version = tokenize.stats.get("pairs_dataset")
    if not dataset_version:
        raise ValueError(f"{tokenize_manifest_id} names no pairs dataset (stats.pairs_dataset)")
    notes: list[str] = []

    words: list[Row] = []
    conversations: list[Row] = []
    texts: list[Row] = []
    durations: dict[str, float] = {}
    for raw in _items(store, chain, "scrub"):
        item = ScrubbedItem.model_validate(raw)
        transcript = _get_model(store, item.transcript, Transcript)
        words += transcript_rows(transcript)
        conversations.append(conversation_row(transcript))
        texts += transcript_texts(transcript)
        durations[transcript.conversation_id] = float(transcript.duration_s)

    judgements: list[Row] = []
    for raw in _items(store, chain, "judge"):
        ref = ObjectRef.model_validate(raw["judgement"])
        judgement = _get_model(store, ref, ConversationJudgement)
        judgements += judgement_rows(judgement)
        texts += judgement_texts(judgement)

    records: dict[str, ResynthesisRecord] = {}
    logged_tokens: dict[str, ObjectRef] = {}
    for raw in _items(store, chain, "resynthesize"):
        placed = ResynthesizedPair.model_validate(raw)
        records[placed.pair.pair_id] = _get_model(store, placed.record, ResynthesisRecord)
        if placed.model_tokens is not None:
            logged_tokens[placed.pair.pair_id] = placed.model_tokens

    # the pairs made: every text is checked; the pair rows are those that reached the dataset
    made: dict[str, PreferencePair] = {}
    for raw in _items(store, chain, "pairs"):
        pair = PreferencePair.model_validate(raw)
        made[pair.pair_id] = pair
        texts += pair_texts(pair, records.get(pair.pair_id))

    dataset = PairDataset(store, dataset_version)
    meta = dataset.manifest
    tensors: list[Row] = []
    counts: Counter[str] = Counter()
    in_dataset: list[str] = []
    for shard in dataset.iter_shards():
        for p in shard:
            tensors.append(tensor_row(p, meta.num_codebooks, set(made) if made else None))
            counts[p.type] += 1
            in_dataset.append(p.pair_id)
    pairs = [pair_row(made[pid], records.get(pid), durations.get(made[pid].conversation_id))
             for pid in dict.fromkeys(in_dataset) if pid in made]

    identity: list[Row] = [{"source": "dataset", "tokenizer_hash": meta.tokenizer_hash,
                            "codec_hash": meta.codec_hash}]
    stats = tokenize.stats
    if stats.get("tokenizer_hash") or stats.get("codec_hash"):
        identity.append({"source": "tokenize run", "tokenizer_hash": stats.get("tokenizer_hash"),
                         "codec_hash": stats.get("codec_hash")})
    settings_key = Keys.item_state("tokenize", tokenize.input_manifest_id or "", "_settings")
    if tokenize.input_manifest_id and store.stat(settings_key) is not None:
        settings = store.get_json(settings_key)
        if settings.get("tokenizer_hash"):
            identity.append({"source": "tokenize settings",
                             "tokenizer_hash": settings.get("tokenizer_hash"),
                             "codec_hash": settings.get("codec_hash")})
    # the logged tokens behind every pair of the dataset (one read per logged object)
    claims: dict[tuple[str, str | None], tuple[str, str]] = {}
    for pair_id in dict.fromkeys(in_dataset):
        logged = logged_tokens.get(pair_id)
        if logged is None:
            continue
        at = (logged.key, logged.version_id)
        if at not in claims:
            tokens = ModelTokens.from_bytes(store.get_bytes(*at))
            claims[at] = (tokens.tokenizer_hash, tokens.codec_hash)
        tok, codec = claims[at]
        identity.append({"source": f"logged model tokens of pair {pair_id}",
                         "tokenizer_hash": tok, "codec_hash": codec})
    if champion is not None:
        identity.append({"source": "champion", "tokenizer_hash": champion[0],
                         "codec_hash": champion[1]})
    else:
        notes.append("champion: not compared (none registered, or validation.compare_champion "
                     "is off)")

    tables = {
        "transcripts": frame("transcripts", words),
        "conversations": frame("conversations", conversations),
        "judgements": frame("judgements", judgements),
        "pairs": frame("pairs", pairs),
        "texts": frame("texts", texts),
        "tensors": frame("tensors", tensors),
        "identity": frame("identity", identity),
        "mix": frame("mix", mix_rows(counts)),
    }
    return ChainTables(tables=tables, tokenize_manifest_id=tokenize_manifest_id,
                       dataset_version=dataset_version,
                       manifests={stage: m.manifest_id for stage, m in chain.items()},
                       notes=notes)
