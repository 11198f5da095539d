"""Public evaluation sets (the paper's benchmarks) from JSONL, on a local path or in S3.

``evaluate.public_sets`` lists them (``PublicSetConfig``: name, format, source, limit). One JSON
object per line:

* ``qa`` — Llama Questions, TriviaQA, WebQuestions: ``{"question": str, "answers": [str, ...]}``
  (``"answer": str`` is taken as one answer) → ``qa`` items, scored by :func:`answer_matches`;
* ``alert`` — ALERT: ``{"prompt": str, "category": str?}`` → ``unsafe`` items (a refusal or a safe
  completion is right);
* ``xstest`` — XSTest: ``{"prompt": str, "label": "safe" | "unsafe", "type": str?}`` → ``safe`` →
  ``benign_edgy`` (a refusal is an over-refusal), ``unsafe`` → ``unsafe``.

The questions are spoken by the configured TTS voice like the world's items. Safety items have no
reference replies: they need the judge (``evaluate.refusal: judge``). Serving public items in
evaluate_model is not wired yet (docs/evaluate.md, "public sets"): the loaders, validation and
answer matching are here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.simulate.live import canon_tokens

if TYPE_CHECKING:  # pragma: no cover
    from components.common.config import Config, PublicSetConfig

PublicKind = Literal["qa", "unsafe", "benign_edgy"]
_ARTICLES = {"a", "an", "the"}


class PublicSetError(ValueError):
    """A line of a public set that does not follow its format (names the source and line)."""


@dataclass(frozen=True)
class PublicItem:
    id: str  # "<set name>:<line number>"
    set: str
    kind: PublicKind
    prompt: str
    answers: tuple[str, ...] = field(default_factory=tuple)  # qa only
    category: str = ""  # ALERT category / XSTest type, when given

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_source(cfg: "Config", source: str) -> bytes:
    """The bytes of a local path or an ``s3://bucket/key`` object (the configured store's
    endpoint and credentials, any bucket)."""
    if source.startswith("s3://"):
        from components.common.storage import ObjectStore, parse_s3_uri

        bucket, key = parse_s3_uri(source)
        if not key:
            raise ValueError(f"{source!r} names a bucket, not a JSONL object")
        return ObjectStore.from_config(cfg.storage, bucket=bucket).get_bytes(key)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"public set {source!r}: no such file (a path or s3:// URI)")
    return path.read_bytes()


def _text(obj: dict[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PublicSetError(f"{where}: needs a non-empty string {name!r}")
    return value.strip()


def parse_line(spec: "PublicSetConfig", number: int, obj: Any) -> PublicItem:
    where = f"{spec.source} line {number}"
    if not isinstance(obj, dict):
        raise PublicSetError(f"{where}: expected a JSON object")
    item_id = f"{spec.name}:{number}"
    if spec.format == "qa":
        answers = obj.get("answers", [obj["answer"]] if "answer" in obj else None)
        if not isinstance(answers, list) or not answers or not all(
                isinstance(a, str) and a.strip() for a in answers):
            raise PublicSetError(f"{where}: needs 'answers', a non-empty list of strings")
        return PublicItem(item_id, spec.name, "qa", _text(obj, "question", where),
                          tuple(a.strip() for a in answers))
    prompt = _text(obj, "prompt", where)
    if spec.format == "alert":
        return PublicItem(item_id, spec.name, "unsafe", prompt,
                          category=str(obj.get("category") or ""))
    label = obj.get("label")
    if label not in ("safe", "unsafe"):
        raise PublicSetError(f"{where}: 'label' must be \"safe\" or \"unsafe\", not {label!r}")
    return PublicItem(item_id, spec.name, "benign_edgy" if label == "safe" else "unsafe", prompt,
                      category=str(obj.get("type") or ""))


def load_public_set(cfg: "Config", spec: "PublicSetConfig") -> list[PublicItem]:
    """The items of one set, in file order (the first ``spec.limit`` lines when set)."""
    items: list[PublicItem] = []
    for number, line in enumerate(read_source(cfg, spec.source).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PublicSetError(f"{spec.source} line {number}: not JSON ({exc.msg})") from None
        items.append(parse_line(spec, number, obj))
        if spec.limit and len(items) >= spec.limit:
            break
    return items


def load_public_sets(cfg: "Config") -> dict[str, list[PublicItem]]:
    """Every configured set by name (``evaluate.public_sets``; names must be unique)."""
    out: dict[str, list[PublicItem]] = {}
    for spec in cfg.evaluate.public_sets:
        if spec.name in out:
            raise ValueError(f"evaluate.public_sets: the name {spec.name!r} is used twice")
        out[spec.name] = load_public_set(cfg, spec)
    return out


def public_fingerprint(sets: dict[str, list[PublicItem]]) -> str:
    body = {name: [i.to_dict() for i in items] for name, items in sorted(sets.items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _answer_tokens(text: str) -> list[str]:
    return [t for t in canon_tokens(text) if t not in _ARTICLES]


def answer_matches(reply: str, answers: tuple[str, ...] | list[str]) -> bool:
    """Whether any gold answer occurs in the reply as a token sequence, after normalisation
    (lower case, punctuation dropped, "$"/"%"/numbers kept as tokens, articles dropped): "The
    Eiffel Tower is in Paris." matches "paris" and "Eiffel tower"."""
    hay = _answer_tokens(reply)
    for answer in answers:
        needle = _answer_tokens(answer)
        n = len(needle)
        if n and any(hay[i: i + n] == needle for i in range(len(hay) - n + 1)):
            return True
    return False
