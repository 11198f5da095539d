"""The gate on crafted in-memory batches: every critical expectation fires on its bad batch and
is named; a clean batch passes; warnings report without stopping; severities are overridable;
the report is one offline page without user text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from components.common.config import Config
from components.contract import PairSide, PreferencePair, ResynthesisRecord, WordStamp
from components.streams.pairset import PairTensors
from components.validate.gate import run_gate
from components.validate.report import render_report
from components.validate.suites import CHECK_BY_NAME, CHECKS, card_numbers, pii_kinds
from components.validate.tables import pair_row, tensor_row
from tests.components.validate.batches import BAD, LIMITS, SECRET_WORDS, clean_tables

CRITICAL = sorted(c.name for c in CHECKS if c.severity == "critical")


def test_every_critical_expectation_has_a_bad_batch() -> None:
    assert sorted(BAD) == CRITICAL


def test_clean_batch_passes() -> None:
    gate = run_gate(clean_tables(), limits=LIMITS)
    assert gate.failed == []
    assert not gate.stopped
    assert sorted(gate.passed) == sorted(CHECK_BY_NAME)


@pytest.mark.parametrize("name", CRITICAL)
def test_critical_expectation_stops_the_gate_and_is_named(name: str) -> None:
    tables = clean_tables()
    BAD[name](tables)
    table = CHECK_BY_NAME[name].table
    gate = run_gate({table: tables[table]}, limits=LIMITS)
    assert gate.stopped
    assert name in gate.critical_failed
    failed = next(f for f in gate.failed if f["name"] == name)
    assert failed["table"] == table and failed["severity"] == "critical"


def test_warning_reports_without_stopping() -> None:
    tables = clean_tables()
    tables["transcripts"].loc[0, "end"] = tables["transcripts"].loc[0, "start"] + 9.0  # 9-s word
    gate = run_gate({"transcripts": tables["transcripts"]}, limits=LIMITS)
    assert not gate.stopped
    assert gate.warnings_failed == ["transcripts.word_duration_bounded"]


def test_severity_override() -> None:
    tables = clean_tables()
    BAD["pairs.chosen_not_over_user"](tables)
    cfg = Config()
    cfg.validation.severity = {"pairs.chosen_not_over_user": "warning",
                               "pairs.chosen_has_words": "critical"}
    gate = run_gate({"pairs": tables["pairs"]}, cfg, limits=LIMITS)
    assert not gate.stopped
    assert gate.failed[0]["name"] == "pairs.chosen_not_over_user"
    assert gate.failed[0]["severity"] == "warning"
    tables["pairs"].loc[0, "chosen_text"] = ""  # now a critical failure by override
    gate = run_gate({"pairs": tables["pairs"]}, cfg, limits=LIMITS)
    assert gate.critical_failed == ["pairs.chosen_has_words"]
    cfg.validation.severity = {"pairs.no_such_thing": "warning"}
    with pytest.raises(ValueError, match="unknown expectations"):
        run_gate({"pairs": tables["pairs"]}, cfg, limits=LIMITS)


def test_limits_from_config() -> None:
    cfg = Config()
    cfg.validation.text_vocab_size, cfg.validation.audio_cardinality = 1000, 2048
    cfg.validation.pair_type_bounds = {"content": (0.0, 0.2), "interruption": (0.0, 1.0),
                                       "silence": (0.0, 1.0)}
    gate = run_gate({"mix": clean_tables()["mix"]}, cfg)  # content 1/3 > 0.2
    assert gate.critical_failed == ["mix.pair_type_share_in_bounds"]
    with pytest.raises(ValueError, match="text_vocab_size"):
        run_gate({"mix": clean_tables()["mix"]}, Config())


@pytest.mark.parametrize("text,kinds", [
    ("call me at [PHONE] or mail [EMAIL], card [CARD], ssn [SSN], iban [IBAN]", []),
    ("we open at 9:00 on 2026-11-27 in room 12, order 12345, 3 to 5 pm", []),
    ("call 555-123-4567", ["phone"]), ("call (555) 123 4567", ["phone"]),
    ("call +44 207 123 4567", ["phone"]), ("ring 555-1234", ["phone"]),
    ("jane.doe@example.co.uk", ["email"]), ("ssn 123-45-6789", ["ssn"]),
    ("GB29 NWBK 6016 1331 9268 19", ["iban"]), ("de89 3704 0044 0532 0130 00", ["iban"]),
    ("4111 1111 1111 1111", ["card"]), ("4111-1111-1111-1112", []),
])
def test_pii_patterns(text: str, kinds: list[str]) -> None:
    assert pii_kinds(text) == kinds


def test_card_numbers_counts_luhn_valid_only() -> None:
    assert card_numbers("4111111111111111 and 5500 0000 0000 0004, not 1234567890123") == 2
    assert card_numbers(None) == 0


def test_report_is_one_offline_page_without_user_text() -> None:
    tables = clean_tables()
    for name in ("texts.no_phone", "transcripts.word_starts_monotonic", "pairs.type_known"):
        BAD[name](tables)
    gate = run_gate(tables, limits=LIMITS)
    assert {"texts.no_phone", "transcripts.word_starts_monotonic"} <= set(gate.critical_failed)
    page = render_report(gate, title="validate test", facts={"dataset version": "pairs-x"})
    assert page.count("<html") == 1 and page.count("<body") == 1
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", page)  # nothing fetched from outside
    assert "<script" not in page
    for word in SECRET_WORDS:
        assert word not in page
    assert "555 123 4567" not in page and "charm" not in page  # bad values stay out too
    assert "texts.no_phone" in page and "STOPPED" in page
    for table in tables:
        assert f'id="table-{table}"' in page  # every table's GX page is inlined


def _side(text: str, start: float, end: float, source: str = "logged") -> PairSide:
    words = text.split()
    step = (end - start) / max(len(words), 1)
    return PairSide(text=text, start=start, end=end, source=source,
                    words=[WordStamp(word=w, start=start + i * step, end=start + (i + 1) * step)
                           for i, w in enumerate(words)])


def test_pair_row_measures_overlap_with_the_users_speech() -> None:
    pair = PreferencePair(
        pair_id="p", conversation_id="c", user_pseudonym="u", type="interruption", reply=0,
        user_turn=0, user_end=3.0, next_user_start=8.0, rejected=_side("ok then", 2.0, 3.5),
        chosen=_side("ok then", 3.2, 4.7, "moved"), scores={}, problems=["interruption"],
        judge_backend="b", judge_version="v", serving_model_version="m/1", composer="moved",
        provenance={})
    row = pair_row(pair, None, 12.0)
    assert row["chosen_overlap_s"] == 0.0 and row["conversation_s"] == 12.0
    record = ResynthesisRecord(
        pair_id="p", tts_user="t", tts_model="t",
        user_turns=[{"turn": 0, "start": 1.0, "end": 3.0, "fitted_start": 1.0,
                     "fitted_end": 3.6}],
        user_speech_end=3.6, chosen=pair.chosen, rejected=pair.rejected,
        rejected_audio="logged", fake_values={}, duration_s=12.0)
    row = pair_row(pair, record, 10.0)  # the resynthesised turn runs 0.4 s into the reply
    assert row["chosen_overlap_s"] == pytest.approx(0.4) and row["chosen_overrun_s"] == 0.0
    assert row["conversation_s"] == 12.0  # the resynthesised timeline
    record.user_turns.append({"turn": 1, "start": 4.5, "end": 6.0, "fitted_start": 4.5,
                              "fitted_end": 6.0})
    row = pair_row(pair.model_copy(update={"next_user_start": 4.5}), record, None)
    assert row["chosen_overlap_s"] == pytest.approx(0.4)
    assert row["chosen_overrun_s"] == pytest.approx(0.2)  # runs into the next turn: a warning


def test_tensor_row() -> None:
    rng = np.random.default_rng(0)
    rejected = rng.integers(0, 100, size=(9, 20), dtype=np.int32)
    chosen = rejected.copy()
    windows = np.array([5, 10, 5, 12], dtype=np.int32)
    same = tensor_row(PairTensors("p", "content", chosen, rejected, windows), 4, {"p"})
    assert not same["sides_differ"] and same["user_rows_equal"] and same["in_pairs"]
    chosen = chosen.copy()
    chosen[0, 7] = -1
    chosen[6, 0] = 3  # a user row differs outside the window
    row = tensor_row(PairTensors("p", "content", chosen, rejected, windows), 4, {"q"})
    assert row["sides_differ"] and not row["user_rows_equal"] and not row["in_pairs"]
    assert row["text_min"] == -1 and row["rows"] == row["expected_rows"] == 9


def test_docs_list_every_expectation() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "validate.md").read_text()
    missing = [c.name for c in CHECKS if f"`{c.name}` | {c.severity} |" not in docs]
    assert not missing, f"docs/validate.md does not list {missing} with their severity"
