"""tokenize: preference pairs → Moshi token streams with a scored reply window per side.

Per ResynthesizedPair (see README.md for the rules and their reasons):

* REJECTED = what the model did: its exact logged tokens (``model_tokens.npz``, scrubbed: PII
  frames are NO_TOKEN and stay so). With ``rejected_audio = "resynthesized"`` (the audio-source
  control) the window part is rebuilt from the resynthesised rejected reply: its words' text
  stream and the codes of ``rejected_model.wav``, spliced in like the chosen side.
* CHOSEN = the same streams before the window start, then the text stream of the chosen words as
  resynthesize placed them (``ResynthesisRecord.chosen``: fake values in place of PII
  placeholders, times of the synthesised speech) and the codes of ``chosen_model.wav``. The whole
  waveform is encoded and spliced at the window start, because the codec's codes depend on the
  audio before them (the encoder has a context).
* USER = the codes of the resynthesised ``user.wav`` (whole waveform), the same on both sides.
* A resynthesised rejected side comes without ``model_tokens`` (resynthesize's convention): the
  logged tokens from the pair's provenance still give the context before the window.
* No logged tokens at all: the model's text comes from the redacted transcript's
  words (placeholder words blanked to NO_TOKEN, as scrub blanks logged tokens) and its codes from
  ``rejected_model.wav``; the chosen side is spliced onto that the same way.
* Windows, per side, frames [lo, hi): lo = start frame of the earlier reply − 1 (its
  end-of-padding frame); hi = the side's reply end + K PAD frames, cut at the next user turn and
  at the side's data end, never ending on an end-of-padding token. A silence pair's rejected side
  (no reply) gets the chosen side's span.
* The shared context is left-truncated to the model's context, ending at the later window end.

Each pair's tensors go to ``pairs/<pair_id>/tensors-<settings>-<inputs>.npz`` first (the item's
output, idempotent); after the item loop every done pair is packed, in input order, into the
sharded dataset (`components.streams.pairset`), whose version id lands in the manifest's stats.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common.audio import AudioFormatError, decode_wav, resample
from components.common.config import Config
from components.common.stagekit import ItemFailure, StageRun, iter_items, load_manifest, run_items
from components.common.storage import ObjectStore, StorageError
from components.contract import (
    MODEL_SAMPLE_RATE,
    NO_TOKEN,
    ItemResult,
    Keys,
    ModelTokens,
    ObjectRef,
    PairSide,
    ResynthesisRecord,
    ResynthesizedPair,
    Transcript,
    WordStamp,
    canonical_json,
)
from components.streams.interleave import FRAME_RATE, FRAME_SIZE, start_frame, text_stream
from components.streams.pairset import PairTensors, read_shard, shard_bytes, write_dataset
from components.streams.tokenizer import EPAD_ID, PAD_ID

if TYPE_CHECKING:
    from components.streams.codec import Codec
    from components.streams.tokenizer import TextTokenizer

STAGE = "tokenize"
# Bump when the tensors this stage writes change for the same inputs and settings.
TOKENIZE_VERSION = "tokenize-1"
# Audio may end this many frames (80 ms) before the end of a reply it holds (resampling and
# sample rounding lose a few samples; a word's end time is approximate): the window then ends
# with the audio. More is a per-item error.
LENGTH_TOLERANCE_FRAMES = 1
_FRAME_EPS = 1e-6
# A redacted word as scrub leaves it: "[PHONE]", "[PERSON]", ...
PLACEHOLDER_RE = re.compile(r"^\[[A-Z][A-Z_]*\]$")
_USER_CODE_CACHE = 4  # user.wav is shared by the pairs of one conversation: encode it once


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Windows:
    """Scored frames [lo, hi) of each side."""

    chosen: tuple[int, int]
    rejected: tuple[int, int]

    def array(self) -> np.ndarray:
        return np.array([*self.chosen, *self.rejected], dtype=np.int32)

    def shifted(self, offset: int) -> "Windows":
        """After dropping the first ``offset`` frames (left truncation); a window that started
        before the cut starts at 0."""
        return Windows((max(0, self.chosen[0] - offset), self.chosen[1] - offset),
                       (max(0, self.rejected[0] - offset), self.rejected[1] - offset))


def end_frame(seconds: float, frame_rate: float = FRAME_RATE) -> int:
    """The first frame after audio ending at ``seconds``: ceil(seconds * fr)."""
    return max(0, math.ceil(seconds * frame_rate - _FRAME_EPS))


def is_text_token(token: int) -> bool:
    """A token that carries text: neither PAD, EPAD nor NO_TOKEN."""
    return token >= 0 and token not in (PAD_ID, EPAD_ID)


def has_reply(side: PairSide) -> bool:
    return side.source != "none" and bool(side.words)


def first_start(side: PairSide) -> float:
    return min([side.start, *(w.start for w in side.words)])


def reply_end_frame(text: np.ndarray, end_s: float) -> int:
    """The frame after a reply: the frame after its audio ends, extended over text tokens that
    spill past it (a word with more tokens than frames keeps emitting after its audio)."""
    e = end_frame(end_s)
    n = len(text)
    while e < n and is_text_token(int(text[e])):
        e += 1
    return e


def window_start(chosen: PairSide, rejected: PairSide) -> int:
    """lo: one frame before the earlier reply's first word — the end-of-padding frame that
    announces it, so the decision to start speaking is scored too."""
    starts = [first_start(s) for s in (chosen, rejected) if has_reply(s)]
    if not starts:
        raise ValueError("neither side has a reply")
    return max(0, start_frame(min(starts)) - 1)


def _trim_epad(text: np.ndarray, lo: int, hi: int) -> int:
    """A window never ends on end-of-padding: it announces a word the window does not hold."""
    while hi > lo and int(text[hi - 1]) == EPAD_ID:
        hi -= 1
    return hi


def side_window_end(text: np.ndarray, end_s: float, lo: int, trailing_pad: int, cut: int) -> int:
    """hi of one side: the reply end, then up to ``trailing_pad`` PAD frames (so that stopping
    is scored), stopping early at anything that is not PAD (the end-of-padding of a next word,
    a NO_TOKEN blank), at most ``cut``; never ending on EPAD."""
    limit = min(cut, len(text))
    hi = min(reply_end_frame(text, end_s), limit)
    stop = min(hi + trailing_pad, limit)
    while hi < stop and int(text[hi]) == PAD_ID:
        hi += 1
    return _trim_epad(text, lo, hi)


def reply_windows(chosen_text: np.ndarray, rejected_text: np.ndarray, chosen: PairSide,
                  rejected: PairSide, *, next_user_start: float | None, trailing_pad: int
                  ) -> Windows:
    """Both sides' windows (module docstring). The texts are full-length streams of each side
    (their lengths are where each side's data ends). An empty window stays empty (hi <= lo):
    the caller turns it into a per-item error."""
    lo = window_start(chosen, rejected)
    user_cut = start_frame(next_user_start) if next_user_start is not None else None

    def cut(text: np.ndarray) -> int:
        return len(text) if user_cut is None else min(len(text), user_cut)

    hi_c = side_window_end(chosen_text, chosen.end, lo, trailing_pad, cut(chosen_text))
    if has_reply(rejected):
        hi_r = side_window_end(rejected_text, rejected.end, lo, trailing_pad, cut(rejected_text))
    else:  # silence: what the model did over the span where it should have answered
        hi_r = _trim_epad(rejected_text, lo, min(hi_c, cut(rejected_text)))
    return Windows((lo, hi_c), (lo, hi_r))


# ----------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class SideStreams:
    """One side's model streams before truncation: text [T] and the model's codes [q, T]."""

    text: np.ndarray
    model_codes: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.text.shape[0])


def splice(prefix: np.ndarray, tail: np.ndarray, lo: int) -> np.ndarray:
    """``prefix``'s frames before ``lo``, ``tail``'s from ``lo`` on (last axis); tail's length."""
    if prefix.shape[-1] < lo or tail.shape[-1] < lo:
        raise ValueError(f"cannot splice at frame {lo}: prefix has {prefix.shape[-1]} frames, "
                         f"tail {tail.shape[-1]}")
    out = np.array(tail, dtype=np.int64, copy=True)
    out[..., :lo] = prefix[..., :lo]
    return out


def splice_side(prefix: SideStreams, text: np.ndarray, codes: np.ndarray, lo: int) -> SideStreams:
    n = min(len(text), codes.shape[-1])
    return SideStreams(splice(prefix.text, text[:n], lo), splice(prefix.model_codes, codes[:, :n], lo))


def _fit(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` cut or NO_TOKEN-padded to ``n`` frames (last axis). Padding only ever lands after a
    side's window, where a causal model's scores do not look."""
    if a.shape[-1] >= n:
        return a[..., :n]
    pad = np.full(a.shape[:-1] + (n - a.shape[-1],), NO_TOKEN, dtype=a.dtype)
    return np.concatenate([a, pad], axis=-1)


def assemble_side(side: SideStreams, user_codes: np.ndarray, n: int) -> np.ndarray:
    """int32 [1 + 2q, n]: text, the model's q codebooks, the user's q codebooks (undelayed)."""
    if user_codes.shape[-1] < n:
        raise ValueError(f"user codes have {user_codes.shape[-1]} frames, {n} needed")
    return np.concatenate([_fit(side.text.reshape(1, -1).astype(np.int64), n),
                           _fit(side.model_codes.astype(np.int64), n),
                           user_codes[:, :n].astype(np.int64)], axis=0).astype(np.int32)


def truncate(chosen: np.ndarray, rejected: np.ndarray, windows: Windows, context: int
             ) -> tuple[np.ndarray, np.ndarray, Windows, int]:
    """Keep frames [max(0, end - context), end), end = the later window end; windows shifted.
    Returns (chosen, rejected, windows, offset of the first kept frame)."""
    end = max(windows.chosen[1], windows.rejected[1])
    offset = max(0, end - context)
    return chosen[:, offset:end], rejected[:, offset:end], windows.shifted(offset), offset


def transcript_text(words: Sequence[WordStamp], tokenizer: "TextTokenizer", n: int) -> np.ndarray:
    """The model's text stream rebuilt from its (redacted) words when no tokens were logged.
    Placeholder words ("[PHONE]") carry no text: the frames they would have held (one frame of
    margin each side, as scrub blanks logged tokens) become NO_TOKEN — no input, no loss —
    where no other word's token or end-of-padding sits."""
    kept = [w for w in words if not PLACEHOLDER_RE.match(w.word)]
    text = text_stream(kept, tokenizer, n)
    for w in words:
        if PLACEHOLDER_RE.match(w.word):
            lo, hi = max(0, start_frame(w.start) - 1), min(n, end_frame(w.end) + 1)
            span = text[lo:hi]
            span[span == PAD_ID] = NO_TOKEN
    return text


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    tokenizer_hash: str
    codec_hash: str
    num_codebooks: int
    context_frames: int
    trailing_pad_frames: int

    @classmethod
    def from_config(cls, cfg: Config, tokenizer: "TextTokenizer", codec: "Codec") -> "Settings":
        return cls(tokenizer.hash, codec.hash, codec.num_codebooks,
                   cfg.tokenize.context_frames or cfg.model.context, cfg.tokenize.trailing_pad_frames)

    def digest(self) -> str:
        body = {"version": TOKENIZE_VERSION, **self.__dict__}
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def tensors_key(item: ResynthesizedPair, settings: Settings) -> str:
    """The pair's tensors object: keyed by the settings and by the exact object versions it was
    built from, so two resynthesis variants of one pair (rejected side logged or resynthesised)
    never read each other's tensors."""
    refs = [item.user_audio, item.chosen_model_audio, item.rejected_model_audio, item.record,
            item.model_tokens]
    inputs = hashlib.sha256(canonical_json(
        [[r.key, r.version_id] if r is not None else None for r in refs]).encode()).hexdigest()
    return Keys.pair_object(item.pair.pair_id, f"tensors-{settings.digest()}-{inputs[:12]}.npz")


SETTINGS_ITEM = "_settings"  # not a pair id (those are hex digests)


def reset_if_settings_changed(store: ObjectStore, input_manifest_id: str, settings: Settings) -> bool:
    """Markers say "done" per (stage, input) whatever the settings were, so a run with other
    settings (K, context, tokenizer, codec) on the same input would otherwise skip every pair and
    pack tensors of the old settings. The settings of the markers are recorded beside them; when
    they differ, this stage's markers for that input are removed (the per-pair objects and
    datasets of the old settings stay: their keys carry their settings). Returns True on reset."""
    key = Keys.item_state(STAGE, input_manifest_id, SETTINGS_ITEM)
    record = {"digest": settings.digest(), "version": TOKENIZE_VERSION, **settings.__dict__}
    if store.stat(key) is not None:
        if store.get_json(key).get("digest") == record["digest"]:
            return False
        for info in list(store.list(Keys.item_state_prefix(STAGE, input_manifest_id))):
            if info.key != key:
                store.delete(info.key)
        store.put_json(key, record)
        return True
    store.put_json(key, record)
    return False


# ----------------------------------------------------------------------------- one pair


def frames_of(samples: int) -> int:
    return -(-samples // FRAME_SIZE)


def _provenance_ref(value: Any) -> ObjectRef | None:
    try:
        return ObjectRef.model_validate(value) if isinstance(value, dict) else None
    except ValueError:
        return None


class PairBuilder:
    """Builds one pair's tensors from its stored inputs (reads only; writes nothing)."""

    def __init__(self, store: ObjectStore, tokenizer: "TextTokenizer", codec: "Codec",
                 settings: Settings):
        self.store, self.tokenizer, self.codec, self.settings = store, tokenizer, codec, settings
        self._user_codes: OrderedDict[str, np.ndarray] = OrderedDict()

    # -- reading
    def _get(self, ref: ObjectRef, what: str) -> bytes:
        try:
            return self.store.get_bytes(ref.key, version_id=ref.version_id)
        except StorageError as exc:
            raise ItemFailure("missing-input", f"{what} ({ref.key}) cannot be read: {exc}") from None

    def _wav(self, ref: ObjectRef, what: str) -> tuple[np.ndarray, str]:
        """Mono float32 at 24 kHz, and the sha256 of the object's bytes."""
        data = self._get(ref, what)
        try:
            audio, rate = decode_wav(data)
        except AudioFormatError as exc:
            raise ItemFailure("bad-audio", f"{what}: {exc}") from None
        if audio.shape[1] != 1:
            raise ItemFailure("bad-audio", f"{what} has {audio.shape[1]} channels, expected mono")
        x = resample(audio[:, 0], rate, MODEL_SAMPLE_RATE)
        return np.ascontiguousarray(x, dtype=np.float32), hashlib.sha256(data).hexdigest()

    def _tokens(self, ref: ObjectRef) -> ModelTokens:
        try:
            tokens = ModelTokens.from_bytes(self._get(ref, "the logged model tokens"))
        except ValueError as exc:
            raise ItemFailure("bad-tokens", str(exc)) from None
        if tokens.tokenizer_hash != self.settings.tokenizer_hash:
            raise ItemFailure("tokenizer-mismatch",
                              f"logged tokens use text tokenizer {tokens.tokenizer_hash}, the "
                              f"configured one is {self.settings.tokenizer_hash}: the rejected side "
                              "must be the model's exact tokens of this stream format")
        if tokens.codec_hash != self.settings.codec_hash or \
                tokens.model_codes.shape[0] != self.settings.num_codebooks:
            raise ItemFailure("codec-mismatch",
                              f"logged tokens use codec {tokens.codec_hash} with "
                              f"{tokens.model_codes.shape[0]} codebooks, the configured one is "
                              f"{self.settings.codec_hash} with {self.settings.num_codebooks}")
        if abs(tokens.frame_rate - FRAME_RATE) > 1e-9:
            raise ItemFailure("bad-tokens", f"logged tokens at {tokens.frame_rate} frames/s, "
                                            f"expected {FRAME_RATE}")
        return tokens

    def _transcript_words(self, item: ResynthesizedPair) -> list[WordStamp]:
        ref = item.pair.provenance.get("transcript")
        try:
            ref = ObjectRef.model_validate(ref) if isinstance(ref, dict) else \
                ObjectRef(key=Keys.transcript(item.pair.conversation_id))
        except ValueError:
            ref = ObjectRef(key=Keys.transcript(item.pair.conversation_id))
        try:
            return Transcript.model_validate_json(self._get(ref, "the redacted transcript")).model_words
        except ValueError as exc:
            raise ItemFailure("bad-transcript", f"{ref.key}: {exc}") from None

    # -- encoding
    def encode(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """Codes [q, frames] of the waveform's first ``frames`` frames (zero-padded past its
        end). The encoder is causal (streaming), so these are exactly the first frames of the
        whole waveform's codes: nothing after the last window end needs encoding."""
        need = frames * FRAME_SIZE
        x = audio[:need]
        if x.shape[0] < need:
            x = np.concatenate([x, np.zeros(need - x.shape[0], np.float32)])
        return self.codec.encode(x, MODEL_SAMPLE_RATE)

    def user_codes(self, audio: np.ndarray, digest: str, frames: int) -> np.ndarray:
        hit = self._user_codes.get(digest)
        if hit is not None and hit.shape[1] >= frames:
            self._user_codes.move_to_end(digest)
            return hit[:, :frames]
        codes = self.encode(audio, frames)
        self._user_codes[digest] = codes
        while len(self._user_codes) > _USER_CODE_CACHE:
            self._user_codes.popitem(last=False)
        return codes

    # -- the pair
    def build(self, item: ResynthesizedPair) -> tuple[PairTensors, dict[str, Any]]:
        pair = item.pair
        tol = LENGTH_TOLERANCE_FRAMES
        try:
            record = ResynthesisRecord.model_validate_json(self._get(item.record, "resynthesis.json"))
        except ValueError as exc:
            raise ItemFailure("bad-record", f"resynthesis.json: {exc}") from None
        if record.pair_id != pair.pair_id:
            raise ItemFailure("bad-record", f"resynthesis.json is for pair {record.pair_id}")
        chosen, rejected = record.chosen, record.rejected
        if not has_reply(chosen):
            raise ItemFailure("no-chosen-reply", "the chosen side has no words to say")
        if pair.type != "silence" and not has_reply(rejected):
            raise ItemFailure("no-rejected-reply", f"a {pair.type} pair whose rejected side has "
                                                   "no words")
        lo = window_start(chosen, rejected)

        user, user_digest = self._wav(item.user_audio, "user.wav")
        chosen_wav, _ = self._wav(item.chosen_model_audio, "chosen_model.wav")
        n_user, n_chosen = frames_of(len(user)), frames_of(len(chosen_wav))
        resynthesized = record.rejected_audio == "resynthesized"

        # The model's own streams (the shared prefix; the rejected side unless resynthesized).
        rejected_wav: np.ndarray | None = None
        tokens_ref = item.model_tokens
        if tokens_ref is None and resynthesized:
            # resynthesize leaves model_tokens out when it replaced the rejected reply's audio;
            # the logged tokens are still the exact context BEFORE the window (both sides').
            tokens_ref = _provenance_ref(pair.provenance.get("model_tokens"))
        if tokens_ref is not None:
            tokens = self._tokens(tokens_ref)
            base_text, base_codes, n_base = tokens.text, tokens.model_codes, tokens.frames
            source = "resynthesized" if resynthesized else "logged-tokens"
        else:
            rejected_wav, _ = self._wav(item.rejected_model_audio, "rejected_model.wav")
            n_base = frames_of(len(rejected_wav))
            base_text = transcript_text(self._transcript_words(item), self.tokenizer, n_base)
            base_codes = None  # encoded below, only as far as needed
            source = "audio"
        if resynthesized and rejected_wav is None:
            rejected_wav, _ = self._wav(item.rejected_model_audio, "rejected_model.wav")
        n_rejected = frames_of(len(rejected_wav)) if resynthesized and rejected_wav is not None \
            else n_base

        # Audio (or tokens) shorter than what must be said on it.
        checks = [("chosen_model.wav", n_chosen, chosen.end), ("user.wav", n_user, chosen.end)]
        if has_reply(rejected):
            what = "rejected_model.wav" if rejected_wav is not None else "the logged tokens"
            checks += [(what, n_rejected, rejected.end), ("user.wav", n_user, rejected.end)]
        for what, n, end_s in checks:
            if n + tol < end_frame(end_s):
                code = "tokens-too-short" if what == "the logged tokens" else "audio-too-short"
                raise ItemFailure(code, f"{what} ends at {n / FRAME_RATE:.2f}s, before the reply "
                                        f"it must hold ends ({end_s:.2f}s)")
        if min(n_base, n_chosen, n_rejected) < lo:
            raise ItemFailure("audio-too-short", f"the streams end before the reply window "
                                                 f"starts (frame {lo})")

        # Text streams (cheap): windows need them before anything is encoded. The user codes
        # must exist on every frame, so neither side's data runs past the user audio (resynthesize
        # writes its tracks up to a horizon shortly after the replies, not the whole log).
        base_prefix_text = np.asarray(base_text, dtype=np.int64)
        chosen_text = splice(base_prefix_text,
                             text_stream(chosen.words, self.tokenizer, n_chosen), lo)
        if resynthesized:
            rejected_text = splice(base_prefix_text,
                                   text_stream(rejected.words, self.tokenizer, n_rejected), lo)
        else:
            rejected_text = base_prefix_text
        windows = reply_windows(chosen_text[:n_user], rejected_text[:n_user], chosen, rejected,
                                next_user_start=pair.next_user_start,
                                trailing_pad=self.settings.trailing_pad_frames)
        for name, (a, b) in (("chosen", windows.chosen), ("rejected", windows.rejected)):
            if b <= a:
                raise ItemFailure("empty-window", f"the {name} window [{a}, {b}) is empty (next "
                                                  f"user turn at {pair.next_user_start}s)")
        for name, s, (a, b) in (("chosen", chosen, windows.chosen),
                                ("rejected", rejected, windows.rejected)):
            if has_reply(s) and start_frame(first_start(s)) >= b:
                # e.g. a reply placed after the next user turn began: its window would score
                # silence only, not the reply
                raise ItemFailure("reply-outside-window",
                                  f"the {name} reply starts at {first_start(s):.2f}s, after its "
                                  f"window ends (frame {b}; next user turn at "
                                  f"{pair.next_user_start}s)")
        end = max(windows.chosen[1], windows.rejected[1])
        offset = max(0, end - self.settings.context_frames)
        for name, (a, b) in (("chosen", windows.chosen), ("rejected", windows.rejected)):
            if b <= offset:
                raise ItemFailure("empty-window", f"the {name} window [{a}, {b}) falls before "
                                                  f"the kept context [{offset}, {end})")

        # Codes, encoded up to the last frame kept.
        user_codes = self.user_codes(user, user_digest, end)
        chosen_codes = self.encode(chosen_wav, min(n_chosen, end))
        if base_codes is None:
            assert rejected_wav is not None
            base_codes = self.encode(rejected_wav, min(n_base, end))
        base = SideStreams(base_prefix_text, np.asarray(base_codes, dtype=np.int64))
        chosen_side = SideStreams(chosen_text, splice(base.model_codes, chosen_codes, lo))
        if resynthesized:
            assert rejected_wav is not None
            rej_codes = (base.model_codes if tokens_ref is None
                         else self.encode(rejected_wav, min(n_rejected, end)))
            rejected_side = SideStreams(rejected_text, splice(base.model_codes, rej_codes, lo))
        else:
            rejected_side = base

        c, r, shifted, offset = truncate(assemble_side(chosen_side, user_codes, end),
                                         assemble_side(rejected_side, user_codes, end),
                                         windows, self.settings.context_frames)
        tensors = PairTensors(pair_id=pair.pair_id, type=pair.type, chosen=c, rejected=r,
                              windows=shifted.array())
        tensors.validate(self.settings.num_codebooks)
        output = {"pair_id": pair.pair_id, "conversation_id": pair.conversation_id,
                  "type": pair.type, "frames": int(c.shape[1]), "offset": offset,
                  "windows": {"chosen": list(shifted.chosen), "rejected": list(shifted.rejected)},
                  "rejected_source": source, "settings": self.settings.digest()}
        return tensors, output


# ----------------------------------------------------------------------------- the stage


def tokenize(cfg: Config, resynthesize_manifest_id: str) -> StageRun:
    from components.streams.codec import load_codec
    from components.streams.tokenizer import load_tokenizer

    store = ObjectStore.from_config(cfg.storage)
    manifest = load_manifest(store, resynthesize_manifest_id)
    tokenizer, codec = load_tokenizer(cfg), load_codec(cfg)
    settings = Settings.from_config(cfg, tokenizer, codec)
    builder = PairBuilder(store, tokenizer, codec, settings)
    if reset_if_settings_changed(store, resynthesize_manifest_id, settings):
        print(f"[{STAGE}] settings changed since the last run on {resynthesize_manifest_id}: "
              "every pair is tokenized again", file=sys.stderr, flush=True)

    def write(item: ResynthesizedPair) -> tuple[bytes, dict[str, Any]]:
        tensors, output = builder.build(item)
        data = shard_bytes([tensors])
        key = tensors_key(item, settings)
        store.put_bytes(key, data, content_type="application/x-npz")
        output["tensors"] = {"key": key, "sha256": hashlib.sha256(data).hexdigest()}
        return data, output

    def process(item: ResynthesizedPair) -> dict[str, Any]:
        return write(item)[1]

    def items() -> Iterator[tuple[str, ResynthesizedPair]]:
        for raw in iter_items(store, manifest):
            item = ResynthesizedPair.model_validate(raw)
            yield item.pair.pair_id, item

    done: set[str] = set()  # pair ids whose result is "done", fresh or from an earlier run

    def on_result(item: ResynthesizedPair, result: ItemResult) -> None:
        if result.status == "done":
            done.add(item.pair.pair_id)

    def done_pairs() -> Iterator[PairTensors]:
        """Every done pair, in input order (as the stage manifest lists them), from its
        per-pair object (rebuilt if that object has gone missing)."""
        seen: set[str] = set()
        for pair_id, item in items():
            if pair_id in seen or pair_id not in done:
                continue
            seen.add(pair_id)
            key = tensors_key(item, settings)
            data = store.get_bytes(key) if store.stat(key) is not None else write(item)[0]
            yield read_shard(data)[0]

    def extra_stats() -> dict[str, Any]:
        dataset = write_dataset(store, done_pairs(), input_manifest_id=resynthesize_manifest_id,
                                tokenizer_hash=settings.tokenizer_hash,
                                codec_hash=settings.codec_hash,
                                num_codebooks=settings.num_codebooks,
                                context_frames=settings.context_frames,
                                trailing_pad_frames=settings.trailing_pad_frames,
                                pairs_per_shard=cfg.tokenize.pairs_per_shard)
        return {"pairs_dataset": dataset.version, "pairs_dataset_pairs": dataset.pairs,
                "pairs_dataset_shards": len(dataset.shards), "pairs_by_type": dataset.counts,
                "tokenizer_hash": settings.tokenizer_hash, "codec_hash": settings.codec_hash}

    return run_items(store, STAGE, resynthesize_manifest_id, items(), process,
                     total=manifest.counts.get("items"), extra_stats=extra_stats,
                     on_result=on_result)
