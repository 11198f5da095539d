"""The local backend's deterministic grounding check of numeric claims (no model)."""

from __future__ import annotations

from components.contract import Passage
from components.judge.backends.grounding import check_reply, extract_quantities, words_to_number


def _p(pid: str, text: str, score: float = 0.5) -> Passage:
    return Passage(passage_id=pid, doc_id=pid.split("#")[0], text=text, score=score)


PLANS = [_p("plans#4", "Each additional line on Unlimited Plus or Essentials costs $25 per month."),
         _p("plans#1", "Unlimited Plus costs $65 per month for one line and includes unlimited "
                       "talk, text and data."),
         _p("billing#1", "Your bill is due 21 days after the bill is issued.")]


def test_quantities_are_read_and_normalised():
    q = {(x.dimension, x.value) for x in extract_quantities(
        "It's sixty-five dollars, 20 GB, 256 kbps, 25%, about 2 hours, open 8 PM to noon, dial 611")}
    assert q == {("money", 65.0), ("data", 20.0), ("speed", 0.256), ("percent", 25.0),
                 ("time", 7200.0), ("clock", 20.0), ("clock", 12.0), ("count", 611.0)}
    assert words_to_number("two hundred and five") == 205 and words_to_number("zebra") is None
    assert extract_quantities("$65 per month")[0].dimension == "money"  # not also a count


def test_wrong_price_is_contradicted_by_the_passage_about_it():
    result = check_reply("Unlimited Plus is $85 per month for one line, before taxes.", PLANS)
    assert result.verdict == "contradicted"
    assert result.checks[0].passage_id == "plans#1" and "$65" in result.checks[0].evidence
    assert "plans#1" in result.summary()


def test_right_price_is_supported_and_no_numbers_is_none():
    assert check_reply("Unlimited Plus is $65 per month for one line.", PLANS).verdict == "supported"
    assert check_reply("Your bill is due 21 days after it's issued.", PLANS).verdict == "supported"
    assert check_reply("Happy to help with your plan!", PLANS).verdict == "none"


def test_durations_across_units_and_free_things():
    passages = [_p("sim#1", "eSIM activation takes about 10 minutes once your phone is on Wi-Fi."),
                _p("sim#0", "A replacement SIM card is free in any store.")]
    assert check_reply("eSIM activation takes about 2 hours.", passages).verdict == "contradicted"
    assert check_reply("eSIM activation takes ten minutes.", passages).verdict == "supported"
    wrong = check_reply("A replacement SIM card is $20 in any store.", passages)
    assert wrong.verdict == "contradicted" and wrong.checks[0].passage_id == "sim#0"


def test_unrelated_passages_leave_a_claim_unverified():
    result = check_reply("The router restarts in 30 seconds.", PLANS)
    assert result.verdict == "unverified" and result.checks[0].passage_id is None
