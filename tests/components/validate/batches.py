"""Crafted in-memory batches for the gate: a clean batch, and one bad mutation per critical
expectation (each breaks exactly the thing that expectation guards)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from components.validate.suites import Limits

LIMITS = Limits(text_vocab=1000, audio_card=2048,
                pair_type_bounds=(("content", 0.0, 0.8), ("interruption", 0.0, 1.0),
                                  ("silence", 0.0, 1.0)))
# User words that must never reach a result or the report (the HTML test greps for them).
SECRET_WORDS = ("zanzibarquokka", "plumberwaffle")


def clean_tables() -> dict[str, pd.DataFrame]:
    words = []
    for conv in ("conv-a", "conv-b"):
        for side, base in (("user", 0.5), ("model", 3.0)):
            text = (f"hello {SECRET_WORDS[0]} there" if side == "user"
                    else f"sure {SECRET_WORDS[1]} thing")
            for i, w in enumerate(text.split()):
                words.append({"conversation_id": conv, "side": side, "index": i, "word": w,
                              "start": base + 0.4 * i, "end": base + 0.4 * i + 0.3,
                              "duration_s": 12.0})
    transcripts = pd.DataFrame(words)
    conversations = pd.DataFrame([
        {"conversation_id": "conv-a", "duration_s": 12.0, "user_words": 3, "model_words": 3},
        {"conversation_id": "conv-b", "duration_s": 12.0, "user_words": 3, "model_words": 3}])
    judgements = pd.DataFrame([
        {"conversation_id": c, "reply": 0, "axis": a, "score": 4.5 if a != "helpfulness" else 1.5}
        for c in ("conv-a", "conv-b")
        for a in ("helpfulness", "safety", "factual_accuracy", "instruction_following", "tone",
                  "interruption", "unresponsiveness")])
    pairs = pd.DataFrame([
        {"pair_id": "p1", "conversation_id": "conv-a", "user_pseudonym": "u1",
         "type": "content", "serving_model_version": "m/1",
         "chosen_text": f"paris {SECRET_WORDS[1]}", "rejected_text": "berlin",
         "chosen_start": 3.0, "chosen_end": 4.5, "rejected_start": 3.0, "rejected_end": 4.0,
         "conversation_s": 12.0, "chosen_overlap_s": 0.0, "chosen_overrun_s": 0.0},
        {"pair_id": "p2", "conversation_id": "conv-a", "user_pseudonym": "u1",
         "type": "interruption", "serving_model_version": "m/1",
         "chosen_text": "sure thing", "rejected_text": "sure thing",
         "chosen_start": 3.4, "chosen_end": 4.9, "rejected_start": 1.5, "rejected_end": 3.0,
         "conversation_s": 12.0, "chosen_overlap_s": 0.0, "chosen_overrun_s": 0.0},
        {"pair_id": "p3", "conversation_id": "conv-b", "user_pseudonym": "u2",
         "type": "silence", "serving_model_version": "m/1",
         "chosen_text": "here you go", "rejected_text": "",
         "chosen_start": 3.4, "chosen_end": 5.0, "rejected_start": 3.4, "rejected_end": 5.0,
         "conversation_s": 12.0, "chosen_overlap_s": 0.05, "chosen_overrun_s": 0.0}])
    texts = pd.DataFrame([
        {"source": "transcript", "owner": "conv-a", "field": "user",
         "text": f"hello {SECRET_WORDS[0]} call me at [PHONE] or [EMAIL] card [CARD]"},
        {"source": "transcript", "owner": "conv-a", "field": "model",
         "text": "we open at 9:00 on 2026-11-27, room 12, order 12345"},
        {"source": "pair", "owner": "p1", "field": "chosen", "text": "paris is the capital"}])
    tensors = pd.DataFrame([
        {"pair_id": p, "type": t, "frames": 48, "rows": 9, "expected_rows": 9, "chosen_lo": 24,
         "chosen_hi": 40, "rejected_lo": 20, "rejected_hi": 40, "text_min": -1, "text_max": 999,
         "audio_min": -1, "audio_max": 2047, "sides_differ": True, "user_rows_equal": True,
         "in_pairs": True}
        for p, t in (("p1", "content"), ("p2", "interruption"), ("p3", "silence"))])
    identity = pd.DataFrame([
        {"source": "dataset", "tokenizer_hash": "tok", "codec_hash": "codec"},
        {"source": "tokenize", "tokenizer_hash": "tok", "codec_hash": "codec"},
        {"source": "champion", "tokenizer_hash": "tok", "codec_hash": "codec"}])
    mix = pd.DataFrame([{"type": "content", "pairs": 1}, {"type": "interruption", "pairs": 1},
                        {"type": "silence", "pairs": 1}])
    return {"transcripts": transcripts, "conversations": conversations,
            "judgements": judgements, "pairs": pairs, "texts": texts, "tensors": tensors,
            "identity": identity, "mix": mix}


def _set(table: str, column: str, value, row: int = 0) -> Callable[[dict], None]:
    def mutate(tables: dict[str, pd.DataFrame]) -> None:
        df = tables[table]
        if column in df.columns and df[column].dtype != object and not isinstance(
                value, (int, float, bool, type(None))):
            df[column] = df[column].astype(object)
        df.loc[df.index[row], column] = value
    return mutate


def _drop(table: str, column: str) -> Callable[[dict], None]:
    def mutate(tables: dict[str, pd.DataFrame]) -> None:
        tables[table] = tables[table].drop(columns=[column])
    return mutate


def _text(value: str) -> Callable[[dict], None]:
    return _set("texts", "text", value, row=0)


def _same_sides(tables: dict[str, pd.DataFrame]) -> None:
    df = tables["pairs"]  # the interruption pair: same text; now the same placement too
    df.loc[1, ["chosen_start", "chosen_end"]] = df.loc[1, ["rejected_start", "rejected_end"]].values


def _mix_bounds(tables: dict[str, pd.DataFrame]) -> None:
    tables["mix"].loc[0, "pairs"] = 10  # content 10/12 > its configured max 0.8 (see test)


# name of a critical expectation -> a mutation of the clean batch that must make it fail
BAD: dict[str, Callable[[dict], None]] = {
    "transcripts.schema": _drop("transcripts", "duration_s"),
    "transcripts.conversation_id_not_null": _set("transcripts", "conversation_id", None),
    "transcripts.index_not_null": _set("transcripts", "index", np.nan),
    "transcripts.word_not_null": _set("transcripts", "word", None),
    "transcripts.side_known": _set("transcripts", "side", "narrator"),
    "transcripts.start_is_number": _set("transcripts", "start", "soon"),
    "transcripts.end_is_number": _set("transcripts", "end", "later"),
    "transcripts.word_starts_monotonic": _set("transcripts", "start", 0.1, row=2),
    "transcripts.word_end_after_start": _set("transcripts", "end", 0.2, row=1),
    "transcripts.words_inside_conversation": _set("transcripts", "end", 30.0, row=5),
    "conversations.schema": _drop("conversations", "duration_s"),
    "conversations.conversation_id_not_null": _set("conversations", "conversation_id", None),
    "conversations.conversation_id_unique": _set("conversations", "conversation_id", "conv-b"),
    "conversations.duration_bounded": _set("conversations", "duration_s", 0.1),
    "judgements.schema": _drop("judgements", "score"),
    "judgements.conversation_id_not_null": _set("judgements", "conversation_id", None),
    "judgements.reply_not_null": _set("judgements", "reply", np.nan),
    "judgements.axis_known": _set("judgements", "axis", "charisma"),
    "judgements.score_is_number": _set("judgements", "score", "great"),
    "judgements.score_in_range": _set("judgements", "score", 7.0),
    "pairs.schema": _drop("pairs", "chosen_overlap_s"),
    "pairs.pair_id_not_null": _set("pairs", "pair_id", None),
    "pairs.pair_id_unique": _set("pairs", "pair_id", "p2"),
    "pairs.conversation_id_not_null": _set("pairs", "conversation_id", None),
    "pairs.user_pseudonym_not_null": _set("pairs", "user_pseudonym", None),
    "pairs.type_known": _set("pairs", "type", "charm"),
    "pairs.chosen_differs_from_rejected": _same_sides,
    "pairs.chosen_not_over_user": _set("pairs", "chosen_overlap_s", 0.8),
    "pairs.chosen_inside_conversation": _set("pairs", "chosen_end", 14.0),
    "texts.schema": _drop("texts", "text"),
    "texts.no_phone": _text("ring me on +1 555 123 4567 tonight"),
    "texts.no_email": _text("write to jane.doe@example.com please"),
    "texts.no_ssn": _text("my social is 123-45-6789"),
    "texts.no_iban": _text("send it to DE89 3704 0044 0532 0130 00"),
    "texts.no_card": _text("card 4111 1111 1111 1111 expires soon"),
    "tensors.schema": _drop("tensors", "in_pairs"),
    "tensors.pair_id_unique": _set("tensors", "pair_id", "p2"),
    "tensors.pair_known": _set("tensors", "in_pairs", False),
    "tensors.rows_match_codebooks": _set("tensors", "rows", 17),
    "tensors.chosen_differs_from_rejected": _set("tensors", "sides_differ", False),
    "tensors.user_rows_shared": _set("tensors", "user_rows_equal", False),
    "tensors.chosen_window_inside": _set("tensors", "chosen_hi", 60),
    "tensors.rejected_window_inside": _set("tensors", "rejected_lo", 40),
    "tensors.text_ids_in_vocab": _set("tensors", "text_max", 1000),
    "tensors.audio_ids_in_codebook": _set("tensors", "audio_min", -2),
    "identity.schema": _drop("identity", "codec_hash"),
    "identity.tokenizer_hash_consistent": _set("identity", "tokenizer_hash", "other", row=2),
    "identity.codec_hash_consistent": _set("identity", "codec_hash", "other", row=1),
    "mix.schema": _drop("mix", "pairs"),
    "mix.not_empty": lambda t: t.__setitem__("mix", t["mix"].assign(pairs=0)),
    "mix.pair_type_share_in_bounds": _mix_bounds,
}
