"""The expectation suites of the data quality gate, in code, versioned with the repository.

One Great Expectations ExpectationSuite per table (tables.py builds the tables). Every
expectation has a unique readable name ("<table>.<what>", kept in its ``meta["name"]``), a default
severity (critical: the gate stops the pipeline before training; warning: reported only) that
``cfg.validation.severity[name]`` overrides, and a one-line reason (its ``notes``, shown in the
data docs). docs/validate.md lists them all; `CHECKS` is the source of truth.

A few expectations read DERIVED columns (a word's start step within its side, a window's slack,
the share of a pair type, the Luhn-valid card numbers in a text): `derive` adds them to the tables
from their plain columns right before validation, so crafted batches (tests) need the plain
columns only, and what a derived column means is defined once, here.

Results keep no row values (`RESULT_FORMAT`: counts only, no unexpected values), so neither the
outcome nor the data docs ever carry user text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from components.contract import JUDGE_AXES, NO_TOKEN

if TYPE_CHECKING:  # pragma: no cover
    from great_expectations.expectations.expectation import Expectation

    from components.common.config import Config

Severity = Literal["critical", "warning"]
# SUMMARY counts without any unexpected value, index or row: no user text in results or docs.
RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 0,
                                 "include_unexpected_rows": False}
# Bump when an expectation is added, removed or changes meaning (recorded in the manifest).
SUITES_VERSION = "validate-suites-1"
SLACK_EPS = 1e-9

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    # one row per word
    "transcripts": ("conversation_id", "side", "index", "word", "start", "end", "duration_s"),
    # one row per conversation
    "conversations": ("conversation_id", "duration_s", "user_words", "model_words"),
    # one row per judged reply × axis
    "judgements": ("conversation_id", "reply", "axis", "score"),
    # one row per preference pair (with its resynthesis record when there is one)
    "pairs": ("pair_id", "conversation_id", "user_pseudonym", "type", "serving_model_version",
              "chosen_text", "rejected_text", "chosen_start", "chosen_end", "rejected_start",
              "rejected_end", "conversation_s", "chosen_overlap_s", "chosen_overrun_s"),
    # one row per stored text (transcript sides, judged requests/replies/rationales, pair sides)
    "texts": ("source", "owner", "field", "text"),
    # one row per pair of the dataset's shards (what lives in tensors)
    "tensors": ("pair_id", "type", "frames", "rows", "expected_rows", "chosen_lo", "chosen_hi",
                "rejected_lo", "rejected_hi", "text_min", "text_max", "audio_min", "audio_max",
                "sides_differ", "user_rows_equal", "in_pairs"),
    # one row per place that claims the dataset's stream identity
    "identity": ("source", "tokenizer_hash", "codec_hash"),
    # one row per pair type of the dataset
    "mix": ("type", "pairs"),
}
PAIR_TYPES = ("content", "interruption", "silence")
NUMBER_TYPES = ["float64", "float32", "int64", "int32", "Float64", "Int64", "Int32"]

# ----------------------------------------------------------------------------- PII patterns
# Raw PII as it would appear in text that escaped scrub. Redaction placeholders ([PHONE],
# [EMAIL], [CARD], ...) never match: they hold no digits and no "@".
PII_PATTERNS: dict[str, str] = {
    # +1 555 123 4567, (555) 123-4567, 555.123.4567, 5551234567, and 7-digit 555-1234
    "phone": r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\w)"
             r"|(?<![\w-])\d{3}-\d{4}(?![\w-])",
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "ssn": r"(?<![\d-])\d{3}[- ]\d{2}[- ]\d{4}(?![\d-])",
    # DE89 3704 0044 0532 0130 00, GB29NWBK60161331926819; lower-case country: digit groups only
    "iban": r"(?<![A-Za-z0-9])(?:[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
            r"|[A-Za-z]{2}\d{2}(?: ?\d{4}){3,7}(?: ?\d{1,3})?)(?![A-Za-z0-9])",
}
# A card number: 13-19 digits, optionally grouped by spaces or dashes, that passes Luhn.
CARD_CANDIDATE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_numbers(text: Any) -> int:
    """How many Luhn-valid card numbers ``text`` holds."""
    if not isinstance(text, str):
        return 0
    return sum(luhn_ok(re.sub(r"\D", "", m.group())) for m in CARD_CANDIDATE.finditer(text))


def pii_kinds(text: str) -> list[str]:
    """The raw PII kinds found in ``text`` (what the texts suite rejects)."""
    found = [kind for kind, pattern in PII_PATTERNS.items() if re.search(pattern, text)]
    return found + (["card"] if card_numbers(text) else [])


# ----------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """What the suites compare against: the configured bounds and the dataset's vocabularies."""

    min_duration_s: float = 0.5
    max_duration_s: float = 3600.0
    max_word_s: float = 5.0
    max_chosen_overlap_s: float = 0.1
    time_tolerance_s: float = 0.25  # slack of "inside the conversation"
    text_vocab: int = 32000  # text ids inside [NO_TOKEN, text_vocab)
    audio_card: int = 2048  # audio ids inside [NO_TOKEN, audio_card)
    pair_type_bounds: tuple[tuple[str, float, float], ...] = tuple(
        (t, 0.0, 1.0) for t in PAIR_TYPES)

    @classmethod
    def from_config(cls, cfg: "Config", *, text_vocab: int, audio_card: int) -> "Limits":
        v = cfg.validation
        return cls(min_duration_s=v.min_duration_s, max_duration_s=v.max_duration_s,
                   max_word_s=v.max_word_s, max_chosen_overlap_s=v.max_chosen_overlap_s,
                   time_tolerance_s=v.time_tolerance_s,
                   text_vocab=int(text_vocab), audio_card=int(audio_card),
                   pair_type_bounds=tuple((t, float(lo), float(hi))
                                          for t, (lo, hi) in sorted(v.pair_type_bounds.items())))

    def bounds(self) -> dict[str, tuple[float, float]]:
        return {t: (lo, hi) for t, lo, hi in self.pair_type_bounds}


# ----------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Check:
    name: str  # "<table>.<what>", unique
    table: str
    severity: Severity  # the default; cfg.validation.severity overrides
    why: str
    make: Callable[[Limits], dict[str, Any]]  # -> {"type": gx class name, **kwargs}


def _c(name: str, severity: Severity, why: str, kind: str, **kwargs: Any) -> Check:
    def make(limits: Limits) -> dict[str, Any]:
        return {"type": kind, **{k: (v(limits) if callable(v) else v) for k, v in kwargs.items()}}

    return Check(name=name, table=name.split(".", 1)[0], severity=severity, why=why, make=make)


def _schema(table: str) -> Check:
    return _c(f"{table}.schema", "critical", f"the {table} table has every column the suite reads",
              "ExpectTableColumnsToMatchSet", column_set=list(TABLE_COLUMNS[table]),
              exact_match=False)


def _not_null(table: str, column: str, severity: Severity = "critical",
              why: str = "") -> Check:
    return _c(f"{table}.{column}_not_null", severity,
              why or f"{column} is a key: never missing",
              "ExpectColumnValuesToNotBeNull", column=column)


def _number(table: str, column: str) -> Check:
    return _c(f"{table}.{column}_is_number", "critical", f"{column} is numeric",
              "ExpectColumnValuesToBeInTypeList", column=column, type_list=NUMBER_TYPES)


def _no_pii(kind: str) -> Check:
    return _c(f"texts.no_{kind}", "critical",
              f"no raw {kind} pattern in any stored text (scrub leaves placeholders like "
              f"[{kind.upper()}])", "ExpectColumnValuesToNotMatchRegex", column="text",
              regex=PII_PATTERNS[kind])


CHECKS: tuple[Check, ...] = (
    # --- transcripts (one row per word)
    _schema("transcripts"),
    _not_null("transcripts", "conversation_id"),
    _not_null("transcripts", "index"),
    _not_null("transcripts", "word"),
    _c("transcripts.side_known", "critical", "a word is the user's or the model's",
       "ExpectColumnValuesToBeInSet", column="side", value_set=["user", "model"]),
    _number("transcripts", "start"),
    _number("transcripts", "end"),
    _c("transcripts.word_starts_monotonic", "critical",
       "word start times never go back within a (conversation, side)",
       "ExpectColumnValuesToBeBetween", column="start_step", min_value=0),
    _c("transcripts.word_end_after_start", "critical", "a word ends at or after its start",
       "ExpectColumnPairValuesAToBeGreaterThanB", column_A="end", column_B="start",
       or_equal=True),
    _c("transcripts.word_duration_bounded", "warning",
       "a word lasts at most validation.max_word_s = {limits.max_word_s} s (longer: a "
       "timestamp glitch)",
       "ExpectColumnValuesToBeBetween", column="word_s", min_value=0,
       max_value=lambda lim: lim.max_word_s),
    _c("transcripts.words_inside_conversation", "critical",
       "every word lies inside [0, conversation duration] (± validation.time_tolerance_s = "
       "{limits.time_tolerance_s} s)",
       "ExpectColumnValuesToBeBetween", column="inside_slack_s", min_value=-SLACK_EPS),
    # --- conversations
    _schema("conversations"),
    _not_null("conversations", "conversation_id"),
    _c("conversations.conversation_id_unique", "critical", "one row per conversation",
       "ExpectColumnValuesToBeUnique", column="conversation_id"),
    _c("conversations.duration_bounded", "critical",
       "duration inside [validation.min_duration_s, max_duration_s] = "
       "[{limits.min_duration_s}, {limits.max_duration_s}] s",
       "ExpectColumnValuesToBeBetween", column="duration_s",
       min_value=lambda lim: lim.min_duration_s, max_value=lambda lim: lim.max_duration_s),
    _c("conversations.has_user_words", "warning", "the user said something",
       "ExpectColumnValuesToBeBetween", column="user_words", min_value=1),
    # --- judgements (one row per reply × axis)
    _schema("judgements"),
    _not_null("judgements", "conversation_id"),
    _not_null("judgements", "reply"),
    _c("judgements.axis_known", "critical", "scores are on the judge's seven axes",
       "ExpectColumnValuesToBeInSet", column="axis", value_set=list(JUDGE_AXES)),
    _number("judgements", "score"),
    _c("judgements.score_in_range", "critical", "judge scores lie in [1, 5]",
       "ExpectColumnValuesToBeBetween", column="score", min_value=1, max_value=5),
    # --- pairs (one row per PreferencePair + ResynthesisRecord)
    _schema("pairs"),
    _not_null("pairs", "pair_id"),
    _c("pairs.pair_id_unique", "critical", "one row per pair",
       "ExpectColumnValuesToBeUnique", column="pair_id"),
    _not_null("pairs", "conversation_id"),
    _not_null("pairs", "user_pseudonym"),
    _not_null("pairs", "serving_model_version", "warning",
              "the serving model version is known (the mix's on-policy filter reads it)"),
    _c("pairs.type_known", "critical", "content, interruption or silence",
       "ExpectColumnValuesToBeInSet", column="type", value_set=list(PAIR_TYPES)),
    _c("pairs.chosen_differs_from_rejected", "critical",
       "the chosen side differs from the rejected one (text or placement)",
       "ExpectColumnValuesToBeInSet", column="sides_differ", value_set=[True]),
    _c("pairs.chosen_has_words", "warning", "the chosen side says something",
       "ExpectColumnValuesToBeBetween", column="chosen_words", min_value=1),
    _c("pairs.chosen_not_over_user", "critical",
       "the chosen reply overlaps the user's speech it answers (and any before it) by at most "
       "validation.max_chosen_overlap_s = {limits.max_chosen_overlap_s} s",
       "ExpectColumnValuesToBeBetween", column="chosen_overlap_s", min_value=0,
       max_value=lambda lim: lim.max_chosen_overlap_s),
    _c("pairs.chosen_clear_of_next_turn", "warning",
       "the chosen reply ends before the user's next turn starts (resynthesize keeps a pair "
       "whose placed reply runs over it, recording chosen_overrun_s)",
       "ExpectColumnValuesToBeBetween", column="chosen_overrun_s", min_value=0,
       max_value=lambda lim: lim.max_chosen_overlap_s),
    _c("pairs.chosen_inside_conversation", "critical",
       "the chosen reply lies inside [0, conversation duration] (the resynthesised timeline "
       "when there is one; ± {limits.time_tolerance_s} s)",
       "ExpectColumnValuesToBeBetween", column="inside_slack_s", min_value=-SLACK_EPS),
    # --- texts (no raw PII anywhere)
    _schema("texts"),
    *(_no_pii(kind) for kind in PII_PATTERNS),
    _c("texts.no_card", "critical",
       "no Luhn-valid card number in any stored text (scrub leaves [CARD])",
       "ExpectColumnValuesToBeBetween", column="card_numbers", max_value=0),
    # --- tensors (per pair of the dataset's shards)
    _schema("tensors"),
    _c("tensors.pair_id_unique", "critical", "each pair once in the dataset",
       "ExpectColumnValuesToBeUnique", column="pair_id"),
    _c("tensors.pair_known", "critical", "every tensor pair is a pair of the chain",
       "ExpectColumnValuesToBeInSet", column="in_pairs", value_set=[True]),
    _c("tensors.rows_match_codebooks", "critical",
       "1 text row + q model + q user codebooks, q as the dataset says",
       "ExpectColumnPairValuesToBeEqual", column_A="rows", column_B="expected_rows"),
    _c("tensors.chosen_differs_from_rejected", "critical",
       "chosen and rejected tokens differ inside the scored windows",
       "ExpectColumnValuesToBeInSet", column="sides_differ", value_set=[True]),
    _c("tensors.user_rows_shared", "critical", "both sides share the same user codebooks",
       "ExpectColumnValuesToBeInSet", column="user_rows_equal", value_set=[True]),
    _c("tensors.chosen_window_inside", "critical", "chosen window: 0 <= lo < hi <= T",
       "ExpectColumnValuesToBeBetween", column="chosen_window_slack", min_value=0),
    _c("tensors.rejected_window_inside", "critical", "rejected window: 0 <= lo < hi <= T",
       "ExpectColumnValuesToBeBetween", column="rejected_window_slack", min_value=0),
    _c("tensors.text_ids_in_vocab", "critical",
       "text ids inside [NO_TOKEN, text vocabulary {limits.text_vocab})",
       "ExpectColumnValuesToBeBetween", column="text_ids_outside", max_value=0),
    _c("tensors.audio_ids_in_codebook", "critical",
       "audio ids inside [NO_TOKEN, codec cardinality {limits.audio_card})",
       "ExpectColumnValuesToBeBetween", column="audio_ids_outside", max_value=0),
    # --- identity (tokenizer and codec claims)
    _schema("identity"),
    _c("identity.tokenizer_hash_consistent", "critical",
       "the dataset, its tokenize run, every pair's logged tokens and the champion name one "
       "text tokenizer", "ExpectColumnUniqueValueCountToBeBetween", column="tokenizer_hash",
       min_value=1, max_value=1),
    _c("identity.codec_hash_consistent", "critical", "the same places name one audio codec",
       "ExpectColumnUniqueValueCountToBeBetween", column="codec_hash", min_value=1,
       max_value=1),
    # --- mix (pair types of the dataset)
    _schema("mix"),
    _c("mix.not_empty", "critical", "the dataset holds at least one pair",
       "ExpectColumnSumToBeBetween", column="pairs", min_value=1),
    _c("mix.pair_type_share_in_bounds", "critical",
       "each pair type's share inside validation.pair_type_bounds "
       "{limits.pair_type_bounds}",
       "ExpectColumnValuesToBeBetween", column="share_slack", min_value=-SLACK_EPS),
)
CHECK_BY_NAME: dict[str, Check] = {c.name: c for c in CHECKS}
assert len(CHECK_BY_NAME) == len(CHECKS), "expectation names must be unique"
TABLES = tuple(TABLE_COLUMNS)


def severity_of(check: Check, overrides: Mapping[str, str]) -> Severity:
    return overrides.get(check.name, check.severity)  # type: ignore[return-value]


def check_overrides(overrides: Mapping[str, str]) -> None:
    unknown = sorted(set(overrides) - set(CHECK_BY_NAME))
    if unknown:
        raise ValueError(f"validation.severity names unknown expectations {unknown}; known: "
                         f"{sorted(CHECK_BY_NAME)}")


def build_suites(limits: Limits, overrides: Mapping[str, str] | None = None,
                 tables: tuple[str, ...] = TABLES) -> dict[str, Any]:
    """table → gx.ExpectationSuite named "<table>", every expectation named in its meta."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    overrides = dict(overrides or {})
    check_overrides(overrides)
    suites: dict[str, Any] = {}
    for table in tables:
        suite = gx.ExpectationSuite(name=table, meta={"suites_version": SUITES_VERSION})
        for check in CHECKS:
            if check.table != table:
                continue
            spec = check.make(limits)
            cls = getattr(gxe, spec.pop("type"))
            severity = severity_of(check, overrides)
            why = check.why.format(limits=limits) if "{limits." in check.why else check.why
            expectation: Expectation = cls(
                **spec, meta={"name": check.name, "table": table, "severity": severity},
                notes=f"{check.name} ({severity}): {why}",
                description=f"{check.name} [{severity}]: {why}",
                severity=FailureSeverity(severity))
            suite.add_expectation(expectation)
        suites[table] = suite
    return suites


# ----------------------------------------------------------------------------- derived columns


def _num(df: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(df[column], errors="coerce")


def _has(df: pd.DataFrame, *columns: str) -> bool:
    return all(c in df.columns for c in columns)


def derive(table: str, df: pd.DataFrame, limits: Limits) -> pd.DataFrame:
    """The table with the derived columns its suite reads (plain columns untouched). A column
    that cannot be derived (its inputs are missing: the schema expectation says so) is left out."""
    df = df.copy()
    if table == "transcripts":
        if _has(df, "conversation_id", "side", "index", "start"):
            start = _num(df, "start")
            order = df.assign(_start=start).sort_values(["conversation_id", "side", "index"],
                                                        kind="stable")
            step = order.groupby(["conversation_id", "side"], sort=False)["_start"].diff()
            df["start_step"] = step.reindex(df.index)
        if _has(df, "start", "end"):
            df["word_s"] = _num(df, "end") - _num(df, "start")
        if _has(df, "start", "end", "duration_s"):
            df["inside_slack_s"] = np.minimum(
                _num(df, "start") + limits.time_tolerance_s,
                _num(df, "duration_s") + limits.time_tolerance_s - _num(df, "end"))
    elif table == "pairs":
        if _has(df, "chosen_text", "rejected_text", "chosen_start", "chosen_end",
                "rejected_start", "rejected_end"):
            same_text = df["chosen_text"].fillna("") == df["rejected_text"].fillna("")
            same_span = (np.isclose(_num(df, "chosen_start"), _num(df, "rejected_start"))
                         & np.isclose(_num(df, "chosen_end"), _num(df, "rejected_end")))
            df["sides_differ"] = ~(same_text & same_span)
        if _has(df, "chosen_text"):
            df["chosen_words"] = df["chosen_text"].fillna("").map(lambda t: len(str(t).split()))
        if _has(df, "chosen_start", "chosen_end", "conversation_s"):
            df["inside_slack_s"] = np.minimum(
                _num(df, "chosen_start") + limits.time_tolerance_s,
                _num(df, "conversation_s") + limits.time_tolerance_s - _num(df, "chosen_end"))
    elif table == "texts":
        if _has(df, "text"):
            df["card_numbers"] = df["text"].map(card_numbers)
    elif table == "tensors":
        for side in ("chosen", "rejected"):
            lo, hi = f"{side}_lo", f"{side}_hi"
            if _has(df, lo, hi, "frames"):
                df[f"{side}_window_slack"] = np.minimum.reduce([
                    _num(df, lo), _num(df, hi) - _num(df, lo) - 1,
                    _num(df, "frames") - _num(df, hi)])
        if _has(df, "text_min", "text_max"):
            df["text_ids_outside"] = ((_num(df, "text_min") < NO_TOKEN).astype(int)
                                      + (_num(df, "text_max") >= limits.text_vocab).astype(int))
        if _has(df, "audio_min", "audio_max"):
            df["audio_ids_outside"] = ((_num(df, "audio_min") < NO_TOKEN).astype(int)
                                       + (_num(df, "audio_max") >= limits.audio_card).astype(int))
    elif table == "mix":
        if _has(df, "type", "pairs"):
            bounds = limits.bounds()
            counts = _num(df, "pairs").fillna(0)
            total = float(counts.sum())
            df["share"] = counts / total if total else 0.0
            lo = df["type"].map(lambda t: bounds.get(t, (0.0, 1.0))[0])
            hi = df["type"].map(lambda t: bounds.get(t, (0.0, 1.0))[1])
            df["min_share"], df["max_share"] = lo, hi
            df["share_slack"] = np.minimum(df["share"] - lo, hi - df["share"])
    return df
