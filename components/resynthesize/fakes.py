"""Typed fake values for the PII placeholders scrub left ([PHONE], [EMAIL], [PERSON], ...).

A voice saying "bracket phone bracket" — or a text stream carrying "[PHONE]" — would teach the
model nonsense, so every placeholder becomes a plausible value of its type before TTS and before
the text stream. Each value has a WRITTEN form (what the text stream carries: "808-555-0137")
and a SPOKEN form per written token (what the voice says: "eight oh eight, five five five, ...").

The values are fictional by construction and disjoint from the simulated world's planted PII (a
test checks it), so the privacy audit, which searches every stored text for the world's values,
can never mistake one for a leak:

* phones: 555-01xx lines (reserved for fiction) with area codes the simulator never uses;
* e-mails: invented names at example.com / example.org (RFC 2606);
* names, towns, streets: invented lists, none shared with the simulator's;
* cards: Luhn-valid numbers on the 2223 00 test prefix (the simulator uses 4000 00 and a few
  well-known test numbers); SSNs: 987-65-432x (reserved for advertising); IPs: 192.0.2.x
  (RFC 5737 documentation range); IBANs: GB.. TEST with a valid mod-97 check; account numbers:
  8 digits starting 90.

Deterministic: a value depends only on (seed, conversation, side, turn, occurrence) — the same
user turn gets the same values in every pair of its conversation (so its TTS is cached once), and
a model word that echoes a placeholder the user said before reuses the user's latest value of
that type (the model repeating the caller's number back says the same number).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from components.speech.textnorm import DIGIT_WORDS, digits_words, number_words

PLACEHOLDER_RE = re.compile(r"\[([A-Z_]+)\]")

FIRST_NAMES = ["Avery", "Rowan", "Quinn", "Harper", "Skyler", "Morgan", "Emery", "Reese",
               "Dakota", "Sawyer", "Lennox", "Marlowe", "Tamsin", "Odile", "Bram", "Ysolde"]
LAST_NAMES = ["Ashdown", "Brightwater", "Calloway", "Dunmore", "Everly", "Fairbanks",
              "Greystone", "Holloway", "Merriweather", "Thornbury", "Quenby", "Wexley"]
TOWNS = ["Brambleton", "Westmarch", "Fernhollow", "Quillby", "Larkhaven", "Oldmere",
         "Stonebridge", "Ravensford"]
STREETS = ["Juniper", "Larkspur", "Bramble", "Foxglove", "Heather", "Thistle", "Bluebell"]
STREET_KINDS = ["Way", "Terrace", "Place", "Circle"]
AREA_CODES = ["808", "907", "401", "225", "615", "919"]
EMAIL_DOMAINS = ["example.com", "example.org"]
LETTER_NAMES = {"a": "ay", "b": "bee", "c": "see", "d": "dee", "e": "ee", "f": "eff", "g": "gee",
                "h": "aitch", "i": "eye", "j": "jay", "k": "kay", "l": "el", "m": "em", "n": "en",
                "o": "oh", "p": "pee", "q": "cue", "r": "ar", "s": "ess", "t": "tee", "u": "you",
                "v": "vee", "w": "double you", "x": "ex", "y": "why", "z": "zed"}

Token = tuple[str, str]  # (written, spoken)


def luhn_check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # doubled once the check digit is appended
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = "".join(c for c in number if c.isdigit())
    return len(digits) >= 12 and luhn_check_digit(digits[:-1]) == digits[-1]


def _email_spoken(address: str) -> str:
    names = {".": "dot", "@": "at", "_": "underscore", "-": "dash"}
    return " ".join(names.get(part, part) for part in re.split(r"([.@_-])", address) if part)


def _iban(rng: random.Random) -> str:
    bban = "TEST" + "".join(str(rng.randrange(10)) for _ in range(14))
    rearranged = bban + "GB00"
    number = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"GB{98 - number % 97:02d}{bban}"


def fake_value(kind: str, rng: random.Random) -> list[Token]:
    """The written tokens and their spoken forms of one fake value of placeholder `kind`
    ("PHONE", "EMAIL", ...; unknown kinds get a neutral word, never the placeholder)."""
    if kind == "PHONE":
        area, line = rng.choice(AREA_CODES), f"01{rng.randrange(100):02d}"
        spoken = ", ".join(digits_words(g) for g in (area, "555", line))
        return [(f"{area}-555-{line}", spoken)]
    if kind in ("PERSON", "NAME"):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        return [(first, first), (last, last)]
    if kind == "EMAIL":
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        address = f"{first}.{last}@{rng.choice(EMAIL_DOMAINS)}".lower()
        return [(address, _email_spoken(address))]
    if kind == "ADDRESS":
        number = rng.randrange(12, 990)
        street, street_kind = rng.choice(STREETS), rng.choice(STREET_KINDS)
        return [(str(number), number_words(number)), (street, street), (street_kind, street_kind)]
    if kind == "CARD":
        payload = "222300" + "".join(str(rng.randrange(10)) for _ in range(9))
        card = payload + luhn_check_digit(payload)
        groups = [card[i:i + 4] for i in range(0, 16, 4)]
        return [(g, digits_words(g) + ("," if i < 3 else "")) for i, g in enumerate(groups)]
    if kind == "SSN":
        value = f"987-65-432{rng.randrange(10)}"
        return [(value, ", ".join(digits_words(g) for g in value.split("-")))]
    if kind == "IBAN":
        value = _iban(rng)
        spoken = " ".join(LETTER_NAMES[c.lower()] if c.isalpha() else DIGIT_WORDS[c] for c in value)
        return [(value, spoken)]
    if kind == "IP":
        value = f"192.0.2.{rng.randrange(1, 255)}"
        return [(value, " dot ".join(number_words(int(p)) for p in value.split(".")))]
    if kind == "LOCATION":
        town = rng.choice(TOWNS)
        return [(town, town)]
    if kind == "NUMBER":
        value = "90" + "".join(str(rng.randrange(10)) for _ in range(6))
        return [(value, digits_words(value))]
    if kind == "SPELLED":
        name = rng.choice(FIRST_NAMES).lower()
        return [(ch, LETTER_NAMES[ch]) for ch in name]
    return [("that", "that")]


@dataclass
class FakeValues:
    """Placeholder → fake value substitution for one conversation (see the module doc)."""

    seed: int
    conversation_id: str
    counts: Counter[str] = field(default_factory=Counter)  # "[PHONE]" -> replaced
    _last_user: dict[str, list[Token]] = field(default_factory=dict)
    _memo: dict[tuple[str, int, int, str], list[Token]] = field(default_factory=dict)

    def value(self, kind: str, side: str, turn: int, occurrence: int) -> list[Token]:
        key = (side, turn, occurrence, kind)
        if key not in self._memo:
            if side != "user" and kind in self._last_user:
                self._memo[key] = self._last_user[kind]  # the model echoes what the user said
            else:
                digest = hashlib.sha256(
                    f"{self.seed}|{self.conversation_id}|{side}|{turn}|{occurrence}|{kind}".encode()
                ).digest()
                self._memo[key] = fake_value(kind, random.Random(digest))
        return self._memo[key]

    def tokens(self, words: Sequence[str], side: str, turn: int) -> list[list[Token]]:
        """Per input word, the (written, spoken) tokens it becomes: itself, or the fake value
        of the placeholder it holds (punctuation around the placeholder is kept)."""
        out: list[list[Token]] = []
        seen: Counter[str] = Counter()
        for word in words:
            match = PLACEHOLDER_RE.search(word)
            if match is None:
                out.append([(word, word)])
                continue
            kind = match.group(1)
            value = self.value(kind, side, turn, seen[kind])
            seen[kind] += 1
            self.counts[match.group(0)] += 1
            if side == "user":
                self._last_user[kind] = value
            lead, tail = word[:match.start()], word[match.end():]
            tokens = list(value)
            tokens[0] = (lead + tokens[0][0], tokens[0][1])
            tokens[-1] = (tokens[-1][0] + tail, tokens[-1][1] + tail)
            out.append(tokens)
        return out


def has_placeholder(text: str) -> bool:
    return PLACEHOLDER_RE.search(text) is not None
