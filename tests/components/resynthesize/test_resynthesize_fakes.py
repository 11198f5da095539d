"""Fake values for PII placeholders: none survives, each has its type, deterministic, fictional."""

from __future__ import annotations

import ipaddress
import random
import re

import pytest

from components.resynthesize import fakes as F
from components.scrub.pii import PLACEHOLDERS
from components.simulate import world as W


def _value(kind: str, seed: int = 1) -> list[tuple[str, str]]:
    return F.fake_value(kind, random.Random(seed))


@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDERS.values()))
def test_no_placeholder_survives_in_written_or_spoken_form(placeholder: str) -> None:
    fakes = F.FakeValues(seed=5, conversation_id="c1")
    words = ["so", "it", "is", placeholder + ",", "right?"]
    tokens = [t for group in fakes.tokens(words, "user", 0) for t in group]
    for written, spoken in tokens:
        assert "[" not in written and "]" not in written
        assert "bracket" not in spoken and placeholder.strip("[]").lower() not in spoken.split()
    assert tokens[-2][0].endswith(",")  # punctuation after the placeholder stays
    assert fakes.counts == {placeholder: 1}


def test_each_value_has_its_type() -> None:
    for seed in range(40):
        (phone, spoken), = _value("PHONE", seed)
        assert re.fullmatch(r"\d{3}-555-01\d\d", phone) and "five five five" in spoken
        (email, spoken), = _value("EMAIL", seed)
        assert re.fullmatch(r"[a-z]+\.[a-z]+@example\.(com|org)", email) and " at " in spoken
        card = "".join(w for w, _ in _value("CARD", seed))
        assert len(card) == 16 and card.startswith("222300") and F.luhn_valid(card)
        (ssn, _), = _value("SSN", seed)
        assert re.fullmatch(r"987-65-432\d", ssn)
        (ip, _), = _value("IP", seed)
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("192.0.2.0/24")
        (iban, _), = _value("IBAN", seed)
        number = int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4]))
        assert iban.startswith("GB") and number % 97 == 1
        first, last = _value("PERSON", seed)
        assert first[0] in F.FIRST_NAMES and last[0] in F.LAST_NAMES
        number_, street, kind = _value("ADDRESS", seed)
        assert number_[0].isdigit() and street[0] in F.STREETS and kind[0] in F.STREET_KINDS
        (account, spoken), = _value("NUMBER", seed)
        assert re.fullmatch(r"90\d{6}", account) and len(spoken.split()) == 8
        letters = _value("SPELLED", seed)
        assert all(len(w) == 1 for w, _ in letters)
    assert _value("SOMETHING_NEW") == [("that", "that")]  # unknown types: a neutral word


def test_values_are_deterministic_and_seeded() -> None:
    words = ["[PERSON]", "at", "[PHONE]", "and", "[PHONE]"]
    a = F.FakeValues(5, "c1").tokens(words, "user", 3)
    assert a == F.FakeValues(5, "c1").tokens(words, "user", 3)
    assert a[2] != a[4]  # two phones in one turn are two values
    assert a != F.FakeValues(6, "c1").tokens(words, "user", 3)
    assert a != F.FakeValues(5, "c2").tokens(words, "user", 3)


def test_the_model_echo_reuses_what_the_user_said() -> None:
    fakes = F.FakeValues(5, "c1")
    user = fakes.tokens(["my", "number", "is", "[PHONE]"], "user", 0)
    model = fakes.tokens(["noted:", "[PHONE]."], "model", 0)
    assert model[1][0][0] == user[3][0][0] + "."
    # a type the user never said gets a fresh value
    assert fakes.tokens(["[EMAIL]"], "model", 0)[0][0][0].endswith(("example.com", "example.org"))


def test_fakes_never_collide_with_the_simulated_worlds_pii() -> None:
    """The privacy audit searches every stored text for the world's planted values: a fake value
    must never look like one of them."""
    world_words = set(W.FIRST_NAMES) | set(W.LAST_NAMES) | set(W.STREET_NAMES)
    fake_words = set(F.FIRST_NAMES) | set(F.LAST_NAMES) | set(F.STREETS) | set(F.TOWNS)
    assert not any(a.lower() in b.lower() or b.lower() in a.lower()
                   for a in world_words for b in fake_words)
    assert not set(W.AREA_CODES) & set(F.AREA_CODES)
    cards = {"".join(w for w, _ in _value("CARD", s)) for s in range(200)}
    assert not cards & set(W.CARD_TEST_NUMBERS) and not any(c.startswith("400000") for c in cards)


def test_number_words() -> None:  # the spoken forms fake values use (speech.textnorm)
    assert F.number_words(149) == "one hundred forty nine"
    assert F.number_words(1200) == "one thousand two hundred"
    assert F.digits_words("0142") == "zero one four two"
