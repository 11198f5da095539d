"""The simulated world is self-consistent: facts vs KB, replies vs kinds, PII generators."""

from __future__ import annotations

import random
import re

import pytest

from components.contract import KbDocument
from components.simulate import world as W
from components.speech.textnorm import normalize, number_words, spoken_text, written_text


def _mentions(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w$])" + re.escape(phrase) + r"(?!\w)", text, re.IGNORECASE) is not None


def test_sizes():
    assert 25 <= len(W.FACTS) <= 40
    assert 8 <= len(W.KB_DOCUMENTS) <= 12
    assert len(W.UNSAFE) >= 8 and len(W.BENIGN_EDGY) >= 8
    assert W.SMALL_TALK and W.INSTRUCTIONS and W.UNHELPFUL and W.OFF_TONE and W.BACKCHANNELS
    assert len({f.id for f in W.FACTS}) == len(W.FACTS)
    assert len(W.REQUESTS_BY_ID) == len(W.UNSAFE + W.BENIGN_EDGY + W.SMALL_TALK + W.INSTRUCTIONS)


def test_every_fact_answer_is_in_its_kb_document_and_wrong_answers_are_not_anywhere():
    for doc in W.KB_DOCUMENTS:
        KbDocument.model_validate(doc.model_dump())
    for fact in W.FACTS:
        assert fact.doc_id in W.KB_BY_ID, fact.id
        assert _mentions(W.KB_BY_ID[fact.doc_id].text, fact.answer), (fact.id, fact.answer)
        assert fact.wrong_answer != fact.answer
        for doc in W.KB_DOCUMENTS:
            assert not _mentions(doc.text, fact.wrong_answer), (fact.id, fact.wrong_answer, doc.doc_id)
        assert "{answer}" in fact.reply
        assert fact.answer in fact.correct_reply() and fact.wrong_answer in fact.wrong_reply()
        assert fact.correct_reply() != fact.wrong_reply()
        assert 2 <= len(fact.questions) <= 3


def test_requests_have_distinct_good_and_bad_replies():
    for req in W.REQUESTS_BY_ID.values():
        assert req.prompts and req.good and req.bad and req.good != req.bad, req.id
    for template in W.OFF_TONE:
        assert "{reply}" in template


def test_every_world_text_normalises_to_speakable_words():
    texts = [f.correct_reply() for f in W.FACTS] + [f.wrong_reply() for f in W.FACTS]
    texts += [q for f in W.FACTS for q in f.questions]
    texts += [t for r in W.REQUESTS_BY_ID.values() for t in (*r.prompts, r.good, r.bad)]
    texts += W.UNHELPFUL + W.BACKCHANNELS + W.GREETINGS + W.NUDGES + W.USER_CLOSINGS + W.MODEL_CLOSINGS
    for text in texts:
        tokens = normalize(text)
        assert written_text(tokens) == " ".join(text.split())
        spoken = spoken_text(tokens)
        assert not re.search(r"\d|\$|%", spoken), (text, spoken)  # digits are always spelled out
        assert all(t.spoken.strip() for t in tokens)


def test_text_normalisation_examples():
    said = {t.written: t.spoken for t in normalize("It's $65 per month, 20 GB, 5G covers 92% of us; dial 611. $0.25 or $7.50?")}
    assert said["$65"] == "sixty five dollars"
    assert said["20"] == "twenty" and said["GB,"] == "gigabytes,"
    assert said["5G"] == "five G" and said["92%"] == "ninety two percent"
    assert said["611."] == "six one one."
    assert said["$0.25"] == "twenty five cents" and said["$7.50?"] == "seven dollars fifty?"
    assert number_words(1250) == "one thousand two hundred fifty"


def test_pii_generators_are_deterministic_and_well_formed():
    a, b = W.make_persona(7, 5), W.make_persona(7, 5)
    assert a.user_id == b.user_id and {k: v.written for k, v in a.values.items()} == \
        {k: v.written for k, v in b.values.items()}
    assert W.make_persona(8, 5).user_id != a.user_id
    ids = {W.make_persona(7, i).user_id for i in range(500)}
    assert len(ids) == 500
    for i in range(200):
        p = W.make_persona(3, i)
        v = p.values
        assert re.fullmatch(r"user-\d{5}", p.user_id)
        assert v["name"].written == f"{p.first} {p.last}"
        assert re.fullmatch(r"\d{3}-555-01\d\d", v["phone"].written)
        assert re.fullmatch(r"[a-z0-9._]+@example\.(com|org|net)", v["email"].written)
        assert re.fullmatch(r"\d+ [A-Z][a-z]+ (Street|Avenue|Road|Lane|Drive|Court)", v["address"].written)
        assert re.fullmatch(r"\d{4} \d{4} \d{4} \d{4}", v["card"].written)
        assert W.luhn_valid(v["card"].written), v["card"].written
        for value in v.values():
            assert not re.search(r"\d|@", value.spoken), value.spoken
            assert len(value.tokens) == len(value.written.split())


def test_spoken_forms():
    rng = random.Random(1)
    phone = W.phone_value(rng)
    assert phone.spoken.count(",") == 2 and len(phone.spoken.split()) == 10
    assert "five five five," in phone.spoken
    email = W.email_value(random.Random(0), "Maria", "Lopez")
    assert " at example dot " in email.spoken and "@" not in email.spoken
    assert W.email_value(random.Random(2), "Maria", "Lopez").spoken.startswith(("maria", "m lopez"))
    card = W.PiiValue("card", tuple(W.card_value(random.Random(4)).tokens))
    assert card.spoken.count(",") == 3 and len(card.spoken.split()) == 16
    assert W.luhn_check_digit("411111111111111") == "1"
    assert W.luhn_valid("4111 1111 1111 1111") and not W.luhn_valid("4111 1111 1111 1112")


@pytest.mark.parametrize("ptype", list(W.PII_SAY))
def test_pii_sentences_keep_the_value_tokens(ptype):
    persona = W.make_persona(7, 1)
    value = persona.values[ptype]
    for template in W.PII_SAY[ptype] + W.PII_ECHO[ptype]:
        tokens = W.fill(template, value)
        text = written_text(tokens)
        assert value.written in text
        assert len(spoken_text(tokens).split()) == sum(len(t.spoken.split()) for t in tokens)
    echo = W.pii_echo_value(persona.values["name"], persona)
    assert echo.written == persona.first
