"""The text tokenizer of the Moshi text stream ("inner monologue").

Moshi's text stream is SentencePiece ids with two reserved ids: PAD (3) fills frames where the
model says nothing new, and end-of-padding (EPAD, 0) marks the frame before a word's first token.
Both are control symbols, so SentencePiece never produces them when encoding text, and
``text_card`` (the text vocabulary the LM predicts over) is the vocabulary size; Moshi's initial
text token is ``text_card`` itself.

Production uses Kyutai's tokenizer (tokenizer_spm_32k_3.model) by path or S3 URI. The embedded
default is a small SentencePiece model trained in-process on every sentence the simulated world
can say (`world_corpus`): a 1000-piece vocabulary keeps the text head small and almost every
word of the world a single piece, so a word's tokens fit in the frames the voice takes to say it.

Every model and dataset records the tokenizer's content hash (`TextTokenizer.hash`);
`require_tokenizer` refuses a mismatch, since token ids of another tokenizer mean other words.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import string
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentencepiece

from components.common.files import write_atomic
from components.simulate import world as W
from components.speech.textnorm import normalize, written_text

if TYPE_CHECKING:
    from components.common.config import Config

EPAD_ID = 0  # end-of-padding: the frame before a word's first token
PAD_ID = 3  # text padding: nothing new on this frame
UNK_ID = 1
EPAD_PIECE = "<epad>"
PAD_PIECE = "<pad>"
WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a new (space-separated) word

# Trainer options, pinned for byte-identical models: the same corpus and vocabulary size always
# give the same .model bytes (one thread, the whole corpus in its given order, no sampling, and
# the global RNG seeded before each training). They are part of the embedded tokenizer's cache
# key. Unigram (not BPE) because it is what Kyutai's Moshi tokenizer uses, and on this small
# corpus it keeps whole frequent words as single pieces while still splitting rare ones (phone
# digits, card numbers, e-mail addresses) into reusable pieces. Identity normalisation (no NFKC)
# so that decode(encode(word)) gives the word back exactly: the text stream must round-trip.
TRAINER_OPTIONS: dict[str, Any] = {
    "model_type": "unigram",
    "character_coverage": 1.0,
    "normalization_rule_name": "identity",
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "byte_fallback": False,
    "unk_id": UNK_ID,
    "bos_id": -1,
    "eos_id": -1,
    "pad_id": PAD_ID,
    "pad_piece": PAD_PIECE,
    "control_symbols": [EPAD_PIECE],  # takes the first free id: 0
    # A corpus too small for the requested vocabulary gives a smaller one instead of an error;
    # text_card is the real size either way (train_world_tokenizer reports the shortfall).
    "hard_vocab_limit": False,
    "minloglevel": 2,
}
TRAINER_SEED = 1234
TOKENIZER_VERSION = "world-spm-1"  # bump when the corpus recipe changes in ways the sha misses


class TokenizerMismatch(ValueError):
    """A model or dataset was built with another text tokenizer than the one in use."""


class TextTokenizer:
    """A SentencePiece model plus the conventions of the Moshi text stream."""

    def __init__(self, sp: sentencepiece.SentencePieceProcessor, model_bytes: bytes):
        self.sp = sp
        self.model_bytes = model_bytes
        self._hash = "spm-" + hashlib.sha256(model_bytes).hexdigest()[:16]
        n = sp.get_piece_size()
        # Per-id lookups cached once: text_stream/words_from_text_stream call them per frame.
        self._starts_word = [sp.id_to_piece(i).startswith(WORD_START) and not sp.is_control(i)
                             for i in range(n)]
        self._control = [sp.is_control(i) for i in range(n)]

    @classmethod
    def from_bytes(cls, data: bytes) -> "TextTokenizer":
        sp = sentencepiece.SentencePieceProcessor(model_proto=data)
        return cls(sp, bytes(data))

    @classmethod
    def from_file(cls, path: str | Path) -> "TextTokenizer":
        return cls.from_bytes(Path(path).read_bytes())

    @property
    def hash(self) -> str:
        return self._hash

    @property
    def text_card(self) -> int:
        return self.sp.get_piece_size()

    def encode_word(self, word: str) -> list[int]:
        """The word's ids; the first piece starts with "▁" (SentencePiece's dummy prefix)."""
        return list(self.sp.encode(word))

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, skipping EPAD, PAD and any other control id (and out-of-range ids,
        e.g. Moshi's initial token ``text_card``)."""
        n = len(self._control)
        return self.sp.decode([int(i) for i in ids if 0 <= int(i) < n and not self._control[int(i)]])

    def starts_word(self, token_id: int) -> bool:
        """Whether the piece begins a new word ("▁..."); control ids never do."""
        return 0 <= token_id < len(self._starts_word) and self._starts_word[token_id]

    def is_control(self, token_id: int) -> bool:
        return 0 <= token_id < len(self._control) and self._control[token_id]

    def __repr__(self) -> str:
        return f"TextTokenizer({self.hash}, text_card={self.text_card})"


# ----------------------------------------------------------------------------- the world's corpus


def _lower_first(sentence: str) -> str:
    """How the simulator writes a request that follows an opener without a full stop
    ("Hi, um, how much ..."): its first word lowercased (but "I" stays)."""
    first, _, rest = sentence.partition(" ")
    if first in ("I", "I'm", "I'll") or first[:1].islower():
        return sentence
    return first[:1].lower() + first[1:] + (" " + rest if rest else "")


def world_corpus(persona_seeds: tuple[int, ...] = (0, 1, 2), personas_per_seed: int = 20) -> list[str]:
    """Every sentence the simulated world can say or be asked, in WRITTEN form ("$65", "20 GB",
    "415-555-0142"): the form the model's text stream carries. Deduplicated, in a fixed order (the
    trained tokenizer's bytes depend on it)."""
    return list(_world_corpus(tuple(persona_seeds), personas_per_seed))


@functools.lru_cache(maxsize=4)
def _world_corpus(persona_seeds: tuple[int, ...], personas_per_seed: int) -> tuple[str, ...]:
    out: list[str] = []
    user: list[str] = []  # user sentences, which may also appear with a lowercased first word
    for fact in W.FACTS:
        user.extend(fact.questions)
        out += [fact.correct_reply(), fact.wrong_reply(), fact.answer, fact.wrong_answer]
    requests = W.UNSAFE + W.BENIGN_EDGY + W.SMALL_TALK + W.INSTRUCTIONS
    for req in requests:
        user.extend(req.prompts)
        out += [req.good, req.bad]
    good_replies = [f.correct_reply() for f in W.FACTS] + [r.good for r in requests]
    out += [tpl.format(reply=good) for tpl in W.OFF_TONE for good in good_replies]
    out += W.UNHELPFUL + W.BACKCHANNELS + W.GREETINGS + W.NUDGES + W.MODEL_CLOSINGS
    out += [s for s in W.MODEL_FOLLOWUPS if s]
    user += W.USER_OPENERS + W.USER_FOLLOWUPS + W.USER_CLOSINGS
    # PII: every template filled with sample values of a few seeds' personas, said and echoed.
    for seed in persona_seeds:
        for index in range(personas_per_seed):
            persona = W.make_persona(seed, index)
            for ptype, value in persona.values.items():
                user += [written_text(W.fill(tpl, value)) for tpl in W.PII_SAY[ptype]]
                echo = W.pii_echo_value(value, persona)
                out += [written_text(W.fill(tpl, echo)) for tpl in W.PII_ECHO[ptype]]
    out += user + [_lower_first(s) for s in user]
    for doc in W.KB_DOCUMENTS:
        out.append(doc.title)
        # one sentence per line: SentencePiece caps sentence length, and sentences are the unit
        out += [s for s in re.split(r"(?<=[.!?])\s+", doc.text) if s]
    seen: set[str] = set()
    corpus = []
    for sentence in out:
        written = written_text(normalize(sentence))
        if written and written not in seen:
            seen.add(written)
            corpus.append(written)
    # Every printable ASCII character once, so any ASCII text (an LLM-rewritten reply with a
    # quote or a bracket, say) encodes without <unk> and decodes back exactly.
    corpus.append(" ".join(ch for ch in string.printable if not ch.isspace()))
    return tuple(corpus)


def corpus_sha256(corpus: list[str]) -> str:
    return hashlib.sha256("\n".join(corpus).encode("utf-8")).hexdigest()


def _options_key(vocab_size: int) -> str:
    """Content key of an embedded tokenizer: recipe version, corpus, vocabulary, trainer options."""
    opts = ";".join(f"{k}={TRAINER_OPTIONS[k]}" for k in sorted(TRAINER_OPTIONS))
    key = f"{TOKENIZER_VERSION}|{corpus_sha256(world_corpus())}|{vocab_size}|{opts}|seed={TRAINER_SEED}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def train_tokenizer(corpus: list[str], vocab_size: int) -> TextTokenizer:
    """Train a SentencePiece model in memory with the pinned options (deterministic bytes)."""
    if vocab_size < 8:
        raise ValueError(f"vocab_size {vocab_size} is too small (the reserved ids alone take 3)")
    buf = io.BytesIO()
    sentencepiece.set_random_generator_seed(TRAINER_SEED)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=buf, vocab_size=vocab_size, **TRAINER_OPTIONS)
    except RuntimeError as exc:
        if "required_chars" not in str(exc):
            raise
        # every character of the corpus needs its own piece (character_coverage 1.0)
        needed = len(set("".join(corpus)) - {" "}) + 4  # + "▁" and <epad>, <unk>, <pad>
        raise ValueError(f"vocab_size {vocab_size} is too small for this corpus: it has "
                         f"{needed - 4} distinct characters, so at least {needed} pieces are "
                         "needed") from exc
    tok = TextTokenizer.from_bytes(buf.getvalue())
    # The stream format depends on these ids: fail loudly if a SentencePiece release moves them.
    if not (tok.sp.id_to_piece(EPAD_ID) == EPAD_PIECE and tok.sp.is_control(EPAD_ID)
            and tok.sp.id_to_piece(PAD_ID) == PAD_PIECE and tok.sp.is_control(PAD_ID)
            and tok.sp.is_unknown(UNK_ID)):
        raise RuntimeError("SentencePiece did not place <epad>=0, <unk>=1, <pad>=3")
    return tok


def train_world_tokenizer(vocab_size: int) -> TextTokenizer:
    """The embedded tokenizer for ``vocab_size``: same vocabulary size → same bytes."""
    t0 = time.monotonic()
    tok = train_tokenizer(world_corpus(), vocab_size)
    short = "" if tok.text_card == vocab_size else f" (the corpus supports only {tok.text_card})"
    print(f"[streams] trained the world tokenizer: {tok.text_card} pieces{short} in "
          f"{time.monotonic() - t0:.1f}s, {tok.hash}", file=sys.stderr)
    return tok


def _load_s3(uri: str, cfg: "Config") -> TextTokenizer:
    """Fetch an S3 tokenizer once into the cache dir, keyed by URI and the object's etag/version
    (a replaced object is fetched again)."""
    from components.common.storage import ObjectStore, StorageError, fetch_s3_uri_to_path, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    info = ObjectStore.from_config(cfg.storage, bucket=bucket).stat(key)
    if info is None:
        raise StorageError("tokenizer not found", bucket=bucket, key=key, code="NoSuchKey")
    ident = hashlib.sha256(f"{uri}|{info.etag}|{info.version_id}".encode()).hexdigest()[:16]
    path = Path(cfg.streams.cache_dir) / f"s3-{ident}-{Path(key).name}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.part")
        try:
            fetch_s3_uri_to_path(uri, tmp, cfg.storage)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return TextTokenizer.from_file(path)


def load_tokenizer(cfg: "Config") -> TextTokenizer:
    """The configured tokenizer: "embedded" (trained once, cached under cfg.streams.cache_dir by
    content), a local .model path, or an s3://bucket/key URI (fetched to the cache dir)."""
    source = cfg.streams.tokenizer_source
    if source == "embedded":
        vocab = cfg.streams.tokenizer_vocab_size
        path = Path(cfg.streams.cache_dir) / f"tokenizer-{vocab}-{_options_key(vocab)}.model"
        if path.exists():
            return TextTokenizer.from_file(path)
        tok = train_world_tokenizer(vocab)
        write_atomic(path, tok.model_bytes)
        return tok
    if source.startswith("s3://"):
        return _load_s3(source, cfg)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer_source {source!r}: no such file")
    return TextTokenizer.from_file(path)


def require_tokenizer(expected_hash: str, actual: TextTokenizer | str, what: str) -> None:
    """Refuse ``what`` (a model, a dataset, ...) built with another tokenizer than ``actual``."""
    actual_hash = actual.hash if isinstance(actual, TextTokenizer) else actual
    if expected_hash != actual_hash:
        raise TokenizerMismatch(
            f"{what} was built with text tokenizer {expected_hash}, but the tokenizer in use is "
            f"{actual_hash}: token ids of another tokenizer mean other words")
