"""The embedded text tokenizer: reserved ids, determinism, the world corpus, loading, identity."""

from __future__ import annotations

import os
import re

import pytest

from components.common.config import Config
from components.common.storage import ObjectStore
from components.simulate import world as W
from components.streams.tokenizer import (
    EPAD_ID,
    PAD_ID,
    TextTokenizer,
    TokenizerMismatch,
    load_tokenizer,
    require_tokenizer,
    train_tokenizer,
    train_world_tokenizer,
    world_corpus,
)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return world_corpus()


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return train_world_tokenizer(1000)


@pytest.fixture(scope="module")
def corpus_words(corpus: list[str]) -> list[str]:
    return sorted({w for s in corpus for w in s.split()})


def test_reserved_ids(tok: TextTokenizer) -> None:
    assert (EPAD_ID, PAD_ID) == (0, 3)
    assert tok.sp.id_to_piece(EPAD_ID) == "<epad>" and tok.sp.is_control(EPAD_ID)
    assert tok.sp.id_to_piece(PAD_ID) == "<pad>" and tok.sp.is_control(PAD_ID)
    assert tok.sp.unk_id() == 1 and tok.sp.is_unknown(1)
    assert tok.sp.bos_id() == -1 and tok.sp.eos_id() == -1  # encode adds neither
    assert tok.text_card == tok.sp.get_piece_size() == 1000
    assert not tok.starts_word(EPAD_ID) and not tok.starts_word(PAD_ID)


def test_encode_never_emits_reserved_ids_on_the_corpus(tok: TextTokenizer, corpus: list[str]) -> None:
    ids = {i for ids in tok.sp.encode(corpus) for i in ids}
    assert EPAD_ID not in ids and PAD_ID not in ids
    assert 1 not in ids  # character coverage 1.0: nothing of the world is <unk>
    assert all(not tok.is_control(i) for i in ids)


def test_words_round_trip_and_word_starts(tok: TextTokenizer, corpus_words: list[str]) -> None:
    for word in corpus_words:
        ids = tok.encode_word(word)
        assert tok.decode(ids) == word
        assert tok.starts_word(ids[0]), word
        assert not any(tok.starts_word(i) for i in ids[1:]), word


def test_any_ascii_word_round_trips(tok: TextTokenizer) -> None:
    for word in ['"quoted"', "(aside)", "a+b=c", "~`|^", "<tag>", "{x}", "[1]", "50%\\"]:
        ids = tok.encode_word(word)
        assert 1 not in ids and tok.decode(ids) == word


def test_decode_skips_control_and_foreign_ids(tok: TextTokenizer) -> None:
    ids = tok.sp.encode("Unlimited Plus is $65 per month.")
    mixed = [PAD_ID, EPAD_ID] + ids[:2] + [PAD_ID] + ids[2:] + [EPAD_ID, tok.text_card, -1]
    assert tok.decode(mixed) == "Unlimited Plus is $65 per month."


def test_training_is_deterministic(tok: TextTokenizer) -> None:
    again = train_world_tokenizer(1000)
    assert again.model_bytes == tok.model_bytes
    assert again.hash == tok.hash
    assert re.fullmatch(r"spm-[0-9a-f]{16}", tok.hash)
    assert TextTokenizer.from_bytes(tok.model_bytes).hash == tok.hash


def test_small_vocabulary(corpus: list[str], tok: TextTokenizer) -> None:
    small = train_tokenizer(corpus, 128)
    assert small.text_card == 128 and small.hash != tok.hash
    assert small.sp.id_to_piece(EPAD_ID) == "<epad>" and small.sp.id_to_piece(PAD_ID) == "<pad>"
    ids = {i for ids in small.sp.encode(corpus) for i in ids}
    assert not ids & {EPAD_ID, 1, PAD_ID}
    assert train_tokenizer(corpus, 128).model_bytes == small.model_bytes


def test_too_small_and_too_large_vocabularies(corpus: list[str]) -> None:
    with pytest.raises(ValueError, match="too small for this corpus.*at least 98"):
        train_tokenizer(corpus, 64)
    # More pieces than the corpus supports: a smaller vocabulary, and text_card says how big
    big = train_tokenizer(corpus, 5000)
    assert 1000 < big.text_card < 5000


def test_world_corpus_is_written_and_complete(corpus: list[str]) -> None:
    assert len(corpus) == len(set(corpus))
    text = "\n".join(corpus)
    for fact in W.FACTS:
        assert fact.correct_reply() in corpus and fact.wrong_reply() in corpus
        assert all(q in corpus for q in fact.questions)
    for req in W.UNSAFE + W.BENIGN_EDGY + W.SMALL_TALK + W.INSTRUCTIONS:
        assert req.good in corpus and req.bad in corpus
    assert "Ugh, fine. " + W.FACTS[0].correct_reply() in corpus
    assert "how much is the Unlimited Plus plan?" in corpus  # after an opener ("Hi, um, how ...")
    persona = W.make_persona(0, 0)
    assert f"My card number is {persona.values['card'].written}." in corpus
    assert f"Thanks, {persona.first}." in corpus or f"Nice to meet you, {persona.first}." in corpus
    assert "Discounts cannot be combined." in corpus  # KB documents, one sentence per line
    assert "$65" in text and "sixty five" not in text  # the written form, not the spoken one
    assert corpus == world_corpus()


def test_load_embedded_trains_once_then_reads_the_cache(tmp_path, tok: TextTokenizer) -> None:
    cfg = Config()
    cfg.streams.cache_dir = str(tmp_path)
    first = load_tokenizer(cfg)
    assert first.hash == tok.hash
    (cached,) = tmp_path.glob("tokenizer-1000-*.model")
    assert cached.read_bytes() == tok.model_bytes
    stamp = cached.stat().st_mtime_ns
    assert load_tokenizer(cfg).hash == tok.hash
    assert cached.stat().st_mtime_ns == stamp
    cfg.streams.tokenizer_vocab_size = 128  # another vocabulary: another cache entry
    assert load_tokenizer(cfg).text_card == 128
    assert len(list(tmp_path.glob("tokenizer-*.model"))) == 2


def test_load_from_a_path(tmp_path, tok: TextTokenizer) -> None:
    path = tmp_path / "my.model"
    path.write_bytes(tok.model_bytes)
    cfg = Config()
    cfg.streams.tokenizer_source = str(path)
    assert load_tokenizer(cfg).hash == tok.hash
    cfg.streams.tokenizer_source = str(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(cfg)


def test_require_tokenizer(tok: TextTokenizer) -> None:
    require_tokenizer(tok.hash, tok, "model duplexalign-moshi/3")
    require_tokenizer(tok.hash, tok.hash, "dataset ds-1")
    with pytest.raises(TokenizerMismatch) as err:
        require_tokenizer("spm-0000000000000000", tok, "dataset ds-1")
    message = str(err.value)
    assert "dataset ds-1" in message and "spm-0000000000000000" in message and tok.hash in message
    assert isinstance(err.value, ValueError)


@pytest.mark.integration
def test_load_from_s3_is_cached(services_config: Config, store: ObjectStore, tmp_path,
                                tok: TextTokenizer) -> None:
    store.put_bytes("tokenizers/world.model", tok.model_bytes)
    cfg = services_config.model_copy(deep=True)
    cfg.streams.cache_dir = str(tmp_path)
    cfg.streams.tokenizer_source = store.uri("tokenizers/world.model")
    assert load_tokenizer(cfg).hash == tok.hash
    (cached,) = tmp_path.glob("s3-*-world.model")
    stamp = cached.stat().st_mtime_ns
    assert load_tokenizer(cfg).hash == tok.hash
    assert cached.stat().st_mtime_ns == stamp
    # a replaced object (new etag) is fetched again
    other = train_world_tokenizer(128)
    store.put_bytes("tokenizers/world.model", other.model_bytes)
    assert load_tokenizer(cfg).hash == other.hash
    assert len([p for p in os.listdir(tmp_path) if p.endswith("world.model")]) == 2
