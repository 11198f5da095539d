"""Written text → what the TTS says, token by token.

The simulated world writes its texts the way a text stream would carry them ("$65", "20 GB",
"5G", "415-555-0142"); the voice must say them the way a person would ("sixty five dollars",
"twenty gigabytes", "five G", "four one five, five five five, ..."). Every written token keeps its
spoken words, so word timestamps of the speech map back onto the written tokens exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
DIGIT_WORDS = dict(zip("0123456789", _ONES[:10]))

UNITS = {"GB": "gigabytes", "MB": "megabytes", "Mbps": "megabits per second",
         "kbps": "kilobits per second", "AM": "ay em", "PM": "pee em"}
# Tokens read digit by digit or otherwise specially.
SPECIAL = {"611": "six one one", "911": "nine one one", "24/7": "twenty four seven",
           "&": "and", "55+": "fifty five plus", "eSIM": "ee sim", "eSIMs": "ee sims",
           "Wi-Fi": "wifi", "IMEI": "I M E I", "SIMs": "sims", "Mm-hm.": "Mm hmm.",
           "Mm-hm": "Mm hmm", "Uh-huh.": "Uh huh.", "Uh-huh": "Uh huh"}
_TRAIL = ",.;:!?"


@dataclass(frozen=True)
class Token:
    """One written token (as in the model's text stream) and the words the voice says for it."""

    written: str
    spoken: str


def number_words(n: int) -> str:
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    if n < 1_000_000:
        thousands, rest = divmod(n, 1000)
        return number_words(thousands) + " thousand" + ("" if rest == 0 else " " + number_words(rest))
    millions, rest = divmod(n, 1_000_000)
    return number_words(millions) + " million" + ("" if rest == 0 else " " + number_words(rest))


def digits_words(digits: str, zero: str = "zero") -> str:
    return " ".join(zero if d == "0" else DIGIT_WORDS[d] for d in digits if d.isdigit())


def email_words(address: str) -> str:
    out = []
    for part in re.split(r"([.@_+-])", address.lower()):
        if part == ".":
            out.append("dot")
        elif part == "@":
            out.append("at")
        elif part == "_":
            out.append("underscore")
        elif part == "-":
            out.append("dash")
        elif part == "+":
            out.append("plus")
        elif part:
            # letters then digits: "lopez42" → "lopez four two"
            for chunk in re.findall(r"[a-z]+|\d+", part):
                out.append(digits_words(chunk) if chunk.isdigit() else chunk)
    return " ".join(out)


def _core(core: str) -> str | None:
    if core in SPECIAL:
        return SPECIAL[core]
    if core in UNITS:
        return UNITS[core]
    m = re.fullmatch(r"\$(\d[\d,]*)(?:\.(\d\d))?", core)
    if m:
        dollars = int(m.group(1).replace(",", ""))
        cents = int(m.group(2) or 0)
        if dollars == 0 and cents:
            return number_words(cents) + (" cent" if cents == 1 else " cents")
        words = number_words(dollars) + (" dollar" if dollars == 1 else " dollars")
        return words + (" " + number_words(cents) if cents else "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", core)
    if m:
        return _number(m.group(1)) + " percent"
    m = re.fullmatch(r"(\d)G", core)
    if m:
        return number_words(int(m.group(1))) + " G"
    m = re.fullmatch(r"\d{3}-\d{3}-\d{4}", core)
    if m:
        return ", ".join(digits_words(g) for g in core.split("-"))
    if re.fullmatch(r"[\w.+-]+@[\w-]+(\.[\w-]+)+", core):
        return email_words(core)
    if re.fullmatch(r"\d[\d,]*(\.\d+)?", core):
        return _number(core)
    return None


def _number(text: str) -> str:
    whole, _, frac = text.replace(",", "").partition(".")
    words = number_words(int(whole))
    if frac:
        words += " point " + digits_words(frac)
    return words


def normalize(text: str) -> list[Token]:
    """Written text → tokens with their spoken words (punctuation stays on the spoken words)."""
    tokens: list[Token] = []
    for raw in text.split():
        if raw in SPECIAL:
            tokens.append(Token(raw, SPECIAL[raw]))
            continue
        lead = re.match(r"^[\"'(]*", raw).group(0)
        core = raw[len(lead):]
        trail = ""
        while core and (core[-1] in _TRAIL or core[-1] in "\")'"):
            # keep a trailing "." that belongs to an email/number? never: sentences end there
            trail = core[-1] + trail
            core = core[:-1]
        if not core:  # a punctuation-only token: attach it to the previous one
            if tokens:
                prev = tokens[-1]
                tokens[-1] = Token(prev.written + raw, prev.spoken + raw)
            continue
        spoken = _core(core)
        if spoken is None:
            spoken = core.replace("-", " ") if re.fullmatch(r"[A-Za-z]+(-[A-Za-z]+)+", core) else core
        spoken_trail = "".join(ch for ch in trail if ch in _TRAIL)
        tokens.append(Token(raw, spoken + spoken_trail))
    return tokens


def written_text(tokens: list[Token]) -> str:
    return " ".join(t.written for t in tokens)


def spoken_text(tokens: list[Token]) -> str:
    return " ".join(t.spoken for t in tokens)
