"""A deterministic grounding check of a reply's numeric claims against the retrieved passages.

Part of the local backend's factual-accuracy score (a 270M base model cannot compare "$85" with
"$65"; this check can). Method:

1. **Claims**: every quantity in the reply: money ("$85", "85 dollars", "eighty-five dollars"),
   percentages, data (GB/MB/TB, "gigs"), speeds (kbps/Mbps/Gbps), durations (minutes .. years,
   "next business day" = 1 day), clock times ("8 PM", "noon"), and bare counts ("611",
   "10 times", "6 digits", "12 monthly payments"). Number words up to the hundreds are read.
   Quantities are normalised per dimension (durations in seconds, speeds in Mbps, data in GB, clock
   times in 24-h hours) so "2 hours" meets "10 minutes".
2. **The passages a claim talks about**: the retrieved passages ranked by the content words they
   share with the reply sentence that holds the claim (ties: shared word pairs such as "one
   line", then retrieval order); a passage that shares no content word is not about the claim.
3. **Verdict per claim**: "supported" when one of those passages states the same quantity in the
   same dimension; else "contradicted" when the closest passage that states quantities of that
   dimension shares at least half as many words as the closest passage of all (and none is
   equal), or when the closest passage says the thing is free ("free", "no extra cost") and the
   claim is an amount of money; "unverified" otherwise.
4. **The reply**: "contradicted" if any claim is, "supported" if there are claims and all are
   supported, "unverified" if some are neither, "none" without claims.

Limits, on purpose: only quantities are checked (a wrong plan name or a wrong yes/no is left to
the LM), and only against the passages the stage retrieved (top-k); a number the knowledge base
states in another document that retrieval missed cannot be checked and stays "unverified".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from components.common.kb import content_words
from components.contract import Passage

_UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
          "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
          "nineteen": 19, "zero": 0, "a": 1, "an": 1, "a single": 1}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_NUMBER_WORD = (r"(?:(?:" + "|".join(_TENS) + r")(?:[\s-](?:" +
                "|".join(k for k in _UNITS if k not in ("a", "an", "a single", "zero")) +
                r"))?|" + "|".join(sorted((k for k in _UNITS if k not in ("a", "an", "a single")),
                                          key=len, reverse=True)) +
                r")(?:\s+hundred(?:\s+(?:and\s+)?(?:" + "|".join(_TENS) + "|" +
                "|".join(k for k in _UNITS if k not in ("a", "an", "a single", "zero")) +
                r"))?)?")
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_QTY = rf"(?P<num>{_NUM}|{_NUMBER_WORD})"

_TIME_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "business day": 86400,
               "week": 7 * 86400, "month": 30 * 86400, "year": 365 * 86400}
_DATA_UNITS = {"kb": 1e-6, "mb": 1e-3, "gb": 1.0, "gig": 1.0, "gigs": 1.0, "gigabyte": 1.0,
               "gigabytes": 1.0, "megabyte": 1e-3, "megabytes": 1e-3, "tb": 1000.0,
               "terabyte": 1000.0, "terabytes": 1000.0}
_SPEED_UNITS = {"kbps": 1e-3, "mbps": 1.0, "gbps": 1000.0}

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("money", re.compile(rf"\$\s?(?P<num>{_NUM})(?:\s?(?P<mult>k|thousand|million))?", re.I)),
    ("money", re.compile(rf"\b{_QTY}\s+(?:dollars?|bucks|usd)\b", re.I)),
    ("money", re.compile(rf"\b{_QTY}\s+cents?\b", re.I)),
    ("percent", re.compile(rf"\b{_QTY}\s?(?:%|percent\b|per\s+cent\b)", re.I)),
    ("speed", re.compile(rf"\b{_QTY}\s?(?P<unit>kbps|mbps|gbps)\b", re.I)),
    ("data", re.compile(rf"\b{_QTY}\s?(?P<unit>kb|mb|gb|tb|gigs?|gigabytes?|megabytes?|"
                        rf"terabytes?)\b", re.I)),
    ("time", re.compile(rf"\b{_QTY}\s+(?P<unit>business\s+days?|seconds?|minutes?|hours?|days?|"
                        rf"weeks?|months?|years?)\b(?!\s+(?:payments?|installments?))", re.I)),
    ("time", re.compile(r"\b(?P<phrase>next\s+business\s+day|next\s+day|same\s+day|"
                        r"overnight)\b", re.I)),
    ("clock", re.compile(rf"\b(?P<num>\d{{1,2}}|{_NUMBER_WORD})(?::(?P<min>\d\d))?\s?"
                         rf"(?P<ampm>a\.?m\.?|p\.?m\.?)(?![a-z])", re.I)),
    ("clock", re.compile(r"\b(?P<phrase>noon|midday|midnight)\b", re.I)),
    ("count", re.compile(rf"\b{_QTY}\b(?!\s?(?:%|\$))", re.I)),
]
_FREE = re.compile(r"\b(?:free|no extra (?:cost|charge)|no (?:cost|charge|fee)|at no cost|"
                   r"no additional (?:cost|charge)|complimentary|included at no)\b", re.I)
_SENTENCES = re.compile(r"(?<=[.!?;])\s+")


def words_to_number(text: str) -> float | None:
    """"sixty-five" -> 65, "two hundred" -> 200, "a" -> 1; digits pass through."""
    t = text.lower().replace(",", "").strip()
    try:
        return float(t)
    except ValueError:
        pass
    total = 0.0
    current = 0.0
    seen = False
    for part in re.split(r"[\s-]+", t):
        if part in ("and", ""):
            continue
        if part in _UNITS:
            current += _UNITS[part]
        elif part in _TENS:
            current += _TENS[part]
        elif part == "hundred":
            current = (current or 1) * 100
        elif part == "single":
            continue
        else:
            return None
        seen = True
    return total + current if seen else None


@dataclass(frozen=True)
class Quantity:
    dimension: str  # money | percent | data | speed | time | clock | count
    value: float
    text: str
    start: int
    end: int


def _normalise(kind: str, match: re.Match[str]) -> float | None:
    groups = match.groupdict()
    phrase = (groups.get("phrase") or "").lower()
    if kind == "time" and phrase:
        return 0.0 if phrase in ("same day",) else 86400.0
    if kind == "clock" and phrase:
        return 0.0 if phrase == "midnight" else 12.0
    value = words_to_number(groups["num"]) if groups.get("num") else None
    if value is None:
        return None
    if kind == "money":
        mult = (groups.get("mult") or "").lower()
        value *= {"k": 1e3, "thousand": 1e3, "million": 1e6}.get(mult, 1.0)
        if re.search(r"cents?\b", match.group(0), re.I):
            value /= 100.0
    elif kind == "data":
        value *= _DATA_UNITS[groups["unit"].lower()]
    elif kind == "speed":
        value *= _SPEED_UNITS[groups["unit"].lower()]
    elif kind == "time":
        unit = re.sub(r"\s+", " ", groups["unit"].lower()).rstrip("s")
        value *= _TIME_UNITS[unit]
    elif kind == "clock":
        pm = groups["ampm"].lower().startswith("p")
        hour = value % 12 + (12 if pm else 0)
        value = hour + (int(groups["min"]) / 60.0 if groups.get("min") else 0.0)
    return round(value, 6)


def extract_quantities(text: str) -> list[Quantity]:
    """Quantities in `text`, left to right; a span claimed by an earlier (more specific) pattern
    is not read again by a later one ("$65" is money, not also a count 65)."""
    taken: list[tuple[int, int]] = []
    found: list[Quantity] = []
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(start < e and s < end for s, e in taken):
                continue
            if kind == "count":
                word = match.group("num").lower()
                if word in ("a", "an", "one") and not re.fullmatch(r"\d+", word):
                    continue  # "a", "one" as articles / pronouns carry no checkable number
            value = _normalise(kind, match)
            if value is None:
                continue
            taken.append((start, end))
            found.append(Quantity(kind, value, match.group(0).strip(), start, end))
    return sorted(found, key=lambda q: q.start)


@dataclass(frozen=True)
class ClaimCheck:
    claim: str  # the quantity as written in the reply
    sentence: str  # the reply sentence holding it
    verdict: str  # supported | contradicted | unverified
    passage_id: str | None = None  # the passage the verdict rests on
    evidence: str = ""  # the passage's quantity (or "free") the claim was compared with


@dataclass
class GroundingResult:
    verdict: str  # contradicted | supported | unverified | none
    checks: list[ClaimCheck] = field(default_factory=list)

    def summary(self) -> str:
        """One line for a rationale: the contradictions first, then the support."""
        if not self.checks:
            return "no numeric claims to check against the knowledge base"
        parts = []
        for c in sorted(self.checks, key=lambda c: {"contradicted": 0, "supported": 1}.get(
                c.verdict, 2)):
            if c.verdict == "contradicted":
                parts.append(f"says {c.claim!s} where {c.passage_id} says {c.evidence}")
            elif c.verdict == "supported":
                parts.append(f"{c.claim} supported by {c.passage_id}")
            else:
                parts.append(f"{c.claim} not found in the retrieved passages")
        return "; ".join(parts)


def _bigrams(text: str) -> set[tuple[str, str]]:
    words = re.findall(r"[a-z0-9$%']+", text.lower())
    return set(zip(words, words[1:]))


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def check_reply(reply: str, passages: Sequence[Passage]) -> GroundingResult:
    """Check every quantity of `reply` against `passages` (see the module docstring)."""
    sentences = [s for s in _SENTENCES.split(reply.strip()) if s]
    facts = [(p, extract_quantities(p.text), content_words(p.text), bool(_FREE.search(p.text)))
             for p in passages]
    checks: list[ClaimCheck] = []
    for sentence in sentences:
        claims = extract_quantities(sentence)
        if not claims:
            continue
        words = content_words(sentence)
        pairs = _bigrams(sentence)
        # Passages by shared content words, then shared word pairs ("one line"), then retrieval
        # order; a passage that shares no content word is unrelated.
        ranked = sorted(((len(words & fw), -i, p, qs, free, len(pairs & _bigrams(p.text)))
                         for i, (p, qs, fw, free) in enumerate(facts)),
                        key=lambda t: (t[0], t[5], t[1]), reverse=True)
        ranked = [r[:5] for r in ranked]
        ranked = [r for r in ranked if r[0] > 0]
        for claim in claims:
            checks.append(_check_claim(claim, sentence, ranked))
    if not checks:
        return GroundingResult("none", [])
    verdicts = {c.verdict for c in checks}
    if "contradicted" in verdicts:
        verdict = "contradicted"
    elif verdicts == {"supported"}:
        verdict = "supported"
    else:
        verdict = "unverified"
    return GroundingResult(verdict, checks)


def _check_claim(claim: Quantity, sentence: str, ranked: list) -> ClaimCheck:
    if not ranked:
        return ClaimCheck(claim.text, sentence, "unverified")
    # Supported by the best passage, or by any other passage that shares a word.
    for _, _, passage, quantities, _ in ranked:
        for q in quantities:
            if q.dimension == claim.dimension and _same(q.value, claim.value):
                return ClaimCheck(claim.text, sentence, "supported", passage.passage_id, q.text)
    # Contradicted by the closest passage that states quantities of this dimension, if it is
    # about as close as the closest passage of all (at least half its shared words).
    top = ranked[0][0]
    for shared, _, passage, quantities, _ in ranked:
        same_dim = [q for q in quantities if q.dimension == claim.dimension]
        if same_dim and shared >= max(1, -(-top // 2)):
            evidence = ", ".join(dict.fromkeys(q.text for q in same_dim))
            return ClaimCheck(claim.text, sentence, "contradicted", passage.passage_id, evidence)
    _, _, best, _, free = ranked[0]
    if claim.dimension == "money" and claim.value > 0 and free:
        return ClaimCheck(claim.text, sentence, "contradicted", best.passage_id,
                          "it is free (" + _FREE.search(best.text).group(0) + ")")
    return ClaimCheck(claim.text, sentence, "unverified", best.passage_id)
