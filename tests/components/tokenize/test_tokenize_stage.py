"""The tokenize stage against the live object store, with the real ci tokenizer and codec:
resynthesised pairs (written here as the resynthesize stage writes them) become a streamable
pair dataset whose tensors are exactly the logged tokens, the spliced chosen side and the
codes of the resynthesised audio; bad pairs fail per item; a rerun repays nothing."""

from __future__ import annotations

from typing import Any

import hashlib

import numpy as np
import pytest

from components.common.audio import decode_wav, encode_wav
from components.common.stagekit import ManifestWriter, iter_items, iter_rejects
from components.contract import (
    Keys,
    ModelTokens,
    ObjectRef,
    PairSide,
    PreferencePair,
    ResynthesisRecord,
    ResynthesizedPair,
    Transcript,
    WordStamp,
)
from components.streams.interleave import start_frame, text_stream
from components.streams.pairset import PairDataset
from components.streams.tokenizer import load_tokenizer
from components.tokenize.logic import tokenize, transcript_text

pytestmark = pytest.mark.integration

RATE = 24000
SECONDS = 12.0
FRAMES = 150
GREETING = "Hello how can I help"
REPLY = "Unlimited Plus is 65 dollars"


def timed(text: str, start: float, step: float = 0.4) -> list[WordStamp]:
    return [WordStamp(word=w, start=round(start + i * step, 3), end=round(start + i * step + 0.3, 3))
            for i, w in enumerate(text.split())]


def side(words: list[WordStamp], source: Any) -> PairSide:
    return PairSide(text=" ".join(w.word for w in words), start=words[0].start, end=words[-1].end,
                    words=words, source=source)


def audio(spans: list[tuple[float, float]], seconds: float = SECONDS, seed: int = 0) -> np.ndarray:
    """Speech-like bursts (amplitude-modulated noise) over the spans, silence elsewhere."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(seconds * RATE), np.float32)
    for a, b in spans:
        n = int((b - a) * RATE)
        env = 0.5 + 0.5 * np.sin(np.linspace(0, 6 * np.pi * (b - a), n)) ** 2
        x[int(a * RATE): int(a * RATE) + n] = 0.2 * env * rng.standard_normal(n)
    return x


class Inputs:
    """Writes ResynthesizedPair inputs as the resynthesize stage would, then seals its manifest."""

    def __init__(self, store, tokenizer, codec):
        self.store, self.tok, self.codec = store, tokenizer, codec
        self.writer = ManifestWriter(store, "resynthesize", None)
        self.expect: dict[str, dict] = {}
        self._codes: dict[str, np.ndarray] = {}

    def put(self, key: str, data: bytes) -> ObjectRef:
        return ObjectRef(key=key, version_id=self.store.put_bytes(key, data))

    def add(self, name: str, ptype: Any, *, model_words: list[WordStamp], model_audio: np.ndarray,
            rejected: PairSide, chosen: PairSide, chosen_audio: np.ndarray, user_audio: np.ndarray,
            rejected_audio: np.ndarray | None = None, logged: bool = True,
            tokenizer_hash: str | None = None, codec_hash: str | None = None,
            next_user_start: float | None = 8.6, transcript_words: list[WordStamp] | None = None,
            horizon: float | None = None, tokens_in_provenance: bool = False) -> str:
        """``horizon``: the tracks end there (resynthesize writes them up to shortly after the
        replies, not the whole log); ``tokens_in_provenance``: as resynthesize does for a
        resynthesised rejected side, the tokens only in the pair's provenance."""
        pair_id = hashlib.sha256(name.encode()).hexdigest()[:24]
        cid = f"conv-{name}"
        tokens = ModelTokens(text_stream(model_words, self.tok, FRAMES),
                             # the stage never re-encodes logged codes: any valid codes do
                             np.random.default_rng(len(self.expect)).integers(
                                 0, self.codec.card, size=(self.codec.num_codebooks, FRAMES)),
                             frame_rate=12.5,
                             tokenizer_hash=tokenizer_hash or self.tok.hash,
                             codec_hash=codec_hash or self.codec.hash, model_version="m/1")
        resynth = rejected_audio is not None
        rej_wav = rejected_audio if rejected_audio is not None else model_audio
        if horizon is not None:
            n = int(horizon * RATE)
            user_audio, chosen_audio, rej_wav = user_audio[:n], chosen_audio[:n], rej_wav[:n]
        tokens_ref = (self.put(Keys.conversation_tokens(cid), tokens.to_bytes())
                      if logged else None)
        pair = PreferencePair(
            pair_id=pair_id, conversation_id=cid, user_pseudonym="u-1", type=ptype, reply=1,
            user_turn=0, user_end=5.0, next_user_start=next_user_start, rejected=rejected,
            chosen=chosen, scores={}, problems=[], judge_backend="test", judge_version="v",
            serving_model_version="m/1", composer="test",
            provenance={"model_tokens": tokens_ref.model_dump()} if tokens_ref else {})
        record = ResynthesisRecord(
            pair_id=pair_id, tts_user="test", tts_model="test", user_turns=[], user_speech_end=5.0,
            chosen=chosen, rejected=rejected,
            rejected_audio="resynthesized" if resynth else "logged", fake_values={},
            duration_s=len(user_audio) / RATE)
        if transcript_words is not None:
            self.store.put_json(Keys.transcript(cid), Transcript(
                conversation_id=cid, redacted=True, asr_model="test", duration_s=SECONDS,
                user_words=[], model_words=transcript_words).model_dump(mode="json"))
        item = ResynthesizedPair(
            pair=pair,
            user_audio=self.put(Keys.pair_object(pair_id, "user.wav"), encode_wav(user_audio, RATE)),
            chosen_model_audio=self.put(Keys.pair_object(pair_id, "chosen_model.wav"),
                                        encode_wav(chosen_audio, RATE)),
            rejected_model_audio=self.put(Keys.pair_object(pair_id, "rejected_model.wav"),
                                          encode_wav(rej_wav, RATE)),
            record=self.put(Keys.pair_object(pair_id, "resynthesis.json"),
                            record.model_dump_json().encode()),
            model_tokens=None if tokens_in_provenance else tokens_ref)
        self.writer.add_item(item.model_dump(mode="json"))
        self.expect[pair_id] = {"tokens": tokens, "user": item.user_audio,
                                "chosen": item.chosen_model_audio,
                                "rejected": item.rejected_model_audio}
        return pair_id

    def codes(self, pair_id: str, which: str) -> np.ndarray:
        """What the stage must produce for that track: the codec's codes of the stored audio
        (PCM16 on disk), whole waveform; identical audio is encoded once."""
        ref = self.expect[pair_id][which]
        data = self.store.get_bytes(ref.key, ref.version_id)
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._codes:
            x, rate = decode_wav(data)
            self._codes[digest] = self.codec.encode(x[:, 0], rate)
        return self._codes[digest]

    def seal(self) -> str:
        return self.writer.close().manifest_id


def test_tokenize_stage(stage_cfg, stage_store, codec):
    s = stage_store
    tok = load_tokenizer(stage_cfg)
    inp = Inputs(s, tok, codec)
    greeting = timed(GREETING, 0.2)
    user = audio([(2.4, 5.0), (8.6, 10.0)], seed=1)

    # B: the model answered at 4.0 s, over the user (who ends at 5.0); chosen moved to 5.4 s.
    rej_words, ch_words = timed(REPLY, 4.0), timed(REPLY, 5.4)
    logged_audio = audio([(0.2, 2.1), (4.0, 5.9)], seed=2)
    chosen_audio = audio([(0.2, 2.1), (5.4, 7.3)], seed=3)
    b = dict(model_words=greeting + rej_words, model_audio=logged_audio,
             rejected=side(rej_words, "logged"), chosen=side(ch_words, "moved"),
             chosen_audio=chosen_audio, user_audio=user)
    pid_b = inp.add("b", "interruption", **b)
    # C: the model stayed silent; a composed reply at 5.4 s.
    silent_audio = audio([(0.2, 2.1)], seed=2)
    pid_c = inp.add("c", "silence", model_words=greeting, model_audio=silent_audio,
                    rejected=PairSide(text="", start=5.4, end=5.4, words=[], source="none"),
                    chosen=side(ch_words, "composed"), chosen_audio=chosen_audio, user_audio=user,
                    horizon=7.4)
    # A, the audio-source control: the rejected reply resynthesised too.
    bad_words = timed("I do not know", 5.4)
    pid_a = inp.add("a", "content", model_words=greeting + bad_words,
                    model_audio=audio([(0.2, 2.1), (5.4, 6.9)], seed=2),
                    rejected=side(bad_words, "logged"), chosen=side(ch_words, "rewritten"),
                    chosen_audio=chosen_audio, user_audio=user,
                    rejected_audio=audio([(0.2, 2.1), (5.4, 6.9)], seed=4),
                    horizon=8.4, tokens_in_provenance=True)
    # A without logged tokens: text from the redacted transcript (a PII placeholder in it).
    said = timed("Call me at [PHONE] please", 0.2)
    pid_n = inp.add("n", "content", model_words=said + bad_words, logged=False,
                    model_audio=audio([(0.2, 2.1), (5.4, 6.9)], seed=2),
                    rejected=side(bad_words, "logged"), chosen=side(ch_words, "rewritten"),
                    chosen_audio=chosen_audio, user_audio=user, transcript_words=said + bad_words)
    # Bad input: another tokenizer's / codec's tokens, user audio shorter than the tokens.
    inp.add("bad-tok", "interruption", **b, tokenizer_hash="spm-0000000000000000")
    inp.add("bad-codec", "interruption", **b, codec_hash="mimi-0000000000000000")
    inp.add("short", "interruption", **{**b, "user_audio": user[: 6 * RATE]})
    # ... and a chosen reply placed after the next user turn began (its window: silence only).
    inp.add("late", "interruption", **b, next_user_start=5.3)
    resynth_id = inp.seal()

    run = tokenize(stage_cfg, resynth_id)
    m = run.manifest
    assert m.counts["items"] == 4 and m.counts["rejected"] == 4, m.counts
    assert {r.code for r in iter_rejects(s, m)} == {"tokenizer-mismatch", "codec-mismatch",
                                                    "audio-too-short", "reply-outside-window"}
    records = {r["pair_id"]: r for r in iter_items(s, m)}
    assert records[pid_b]["rejected_source"] == "logged-tokens"
    assert records[pid_a]["rejected_source"] == "resynthesized"
    assert records[pid_n]["rejected_source"] == "audio"
    version = m.stats["pairs_dataset"]
    dataset = PairDataset(s, version)
    assert dataset.manifest.counts == {"content": 2, "interruption": 1, "silence": 1}
    assert dataset.manifest.tokenizer_hash == tok.hash and dataset.manifest.codec_hash == codec.hash
    assert dataset.manifest.context_frames == stage_cfg.model.context == 256
    pairs = {p.pair_id: p for p in dataset}
    assert list(pairs) == [pid_b, pid_c, pid_a, pid_n]  # input order
    q = 4

    # B: windows from the earlier (rejected) start's EPAD frame; each side's own end + K = 4.
    p, e = pairs[pid_b], inp.expect[pid_b]
    lo = start_frame(4.0) - 1
    assert p.chosen_window == (lo, 92 + 4) and p.rejected_window == (lo, 74 + 4)
    n = p.frames
    assert n == 96 and p.chosen.shape == p.rejected.shape == (1 + 2 * q, n)
    # Rejected: the model's exact logged tokens; user rows: the resynthesised user audio's codes.
    assert np.array_equal(p.rejected[0], e["tokens"].text[:n])
    assert np.array_equal(p.rejected[1:1 + q], e["tokens"].model_codes[:, :n])
    assert np.array_equal(p.rejected[1 + q:], inp.codes(pid_b, "user")[:, :n])
    assert np.array_equal(p.chosen[1 + q:], p.rejected[1 + q:])
    # Chosen: identical before lo; the chosen words' text and chosen audio's codes from lo on.
    assert np.array_equal(p.chosen[:, :lo], p.rejected[:, :lo])
    assert np.array_equal(p.chosen[0, lo:], text_stream(ch_words, tok, FRAMES)[lo:n])
    assert np.array_equal(p.chosen[1:1 + q, lo:], inp.codes(pid_b, "chosen")[:, lo:n])

    # C: the rejected side has no reply: its window is the chosen one, here cut where the
    # resynthesised tracks end (7.4 s: frame 93, before the K trailing frames).
    p = pairs[pid_c]
    assert p.chosen_window == p.rejected_window == (start_frame(5.4) - 1, 93) and p.frames == 93

    # A resynthesised: both sides' window parts come from text streams and encoded audio.
    p, e = pairs[pid_a], inp.expect[pid_a]
    lo, n = start_frame(5.4) - 1, p.frames
    assert np.array_equal(p.rejected[:, :lo], p.chosen[:, :lo])
    assert np.array_equal(p.rejected[0, :lo], e["tokens"].text[:lo])  # via the provenance
    assert np.array_equal(p.rejected[1:1 + q, :lo], e["tokens"].model_codes[:, :lo])
    assert np.array_equal(p.rejected[0, lo:], text_stream(bad_words, tok, FRAMES)[lo:n])
    assert np.array_equal(p.rejected[1:1 + q, lo:], inp.codes(pid_a, "rejected")[:, lo:n])

    # A without tokens: the transcript's text (placeholder blanked) and the model audio's codes.
    p, e = pairs[pid_n], inp.expect[pid_n]
    n = p.frames
    assert np.array_equal(p.rejected[0], transcript_text(said + bad_words, tok, FRAMES)[:n])
    assert (p.rejected[0] == -1).any()
    assert np.array_equal(p.rejected[1:1 + q], inp.codes(pid_n, "rejected")[:, :n])

    # Rerun: nothing redone, the identical manifest and dataset version.
    again = tokenize(stage_cfg, resynth_id)
    assert again.processed == 0 and again.manifest.manifest_id == m.manifest_id
    assert again.manifest.stats["pairs_dataset"] == version

    # Other settings (a 60-frame context): every pair redone, left-truncated, a new version.
    short = stage_cfg.model_copy(deep=True)
    short.tokenize.context_frames = 60
    cut = tokenize(short, resynth_id)
    assert cut.processed == 8 and cut.manifest.stats["pairs_dataset"] != version
    p = {x.pair_id: x for x in PairDataset(s, cut.manifest.stats["pairs_dataset"])}[pid_b]
    full = pairs[pid_b]
    assert p.frames == 60 and np.array_equal(p.chosen, full.chosen[:, 36:96])
    assert p.chosen_window == (lo_b := start_frame(4.0) - 1 - 36, 60) and lo_b == 13
    assert p.rejected_window == (13, 42)
    assert PairDataset(s, version).manifest.pairs == 4  # the first version is untouched
