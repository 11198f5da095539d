"""KnowledgeBase on the simulated world's knowledge base, published to the live bucket: sentence
passages with stable ids, normalised MiniLM embeddings, retrieval that finds the document (and
the sentence) that answers the world's fact questions, the disk cache of passage embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from components.common import kb as kbmod
from components.common.kb import KnowledgeBase, split_sentences
from components.simulate import world as W
from components.simulate.generate import publish_kb


def test_split_sentences_keeps_decimals_and_prices():
    text = "Calls cost $0.25 per minute. Travel Pass: it costs $10 per day!  Is it 1.5 GB? Yes."
    assert split_sentences(text) == ["Calls cost $0.25 per minute.",
                                     "Travel Pass: it costs $10 per day!", "Is it 1.5 GB?", "Yes."]


@pytest.mark.integration
def test_retrieval_finds_the_answer_for_world_questions(store, tmp_path):
    publish_kb(store)
    kb = KnowledgeBase.from_store(store, "embedded", tmp_path / "emb")
    docs = W.kb_documents()
    assert {d.doc_id for d in kb.documents} == {d.doc_id for d in docs}
    assert all(p.passage_id == f"{p.doc_id}#{p.passage_id.split('#')[1]}" for p in kb.passages)
    assert kb.passage("plans#1").text.startswith("Unlimited Plus costs $65 per month")

    vectors = kb.embed(["How much is Unlimited Plus?", "hello"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    doc_at_1 = answer_at_3 = n = 0
    for fact in W.FACTS:
        for question in fact.questions:
            found = kb.retrieve(question, k=3)
            assert len(found) == 3 and found[0].score >= found[-1].score - 0.3
            n += 1
            doc_at_1 += found[0].doc_id == fact.doc_id
            answer_at_3 += any(fact.answer.removeprefix("for ").removeprefix("the ") in p.text
                               for p in found)
    # Measured 0.90 / 0.96 (question alone; the judge also adds the reply to the query).
    assert doc_at_1 / n >= 0.85 and answer_at_3 / n >= 0.9, (doc_at_1 / n, answer_at_3 / n)

    top = kb.retrieve("What's the late fee if I pay my bill late? A fee of $7 is added.", k=1)[0]
    assert top.passage_id.startswith("billing#") and "$7" in top.text


@pytest.mark.integration
def test_passage_embeddings_are_cached_on_disk(store, tmp_path):
    publish_kb(store)
    first = KnowledgeBase.from_store(store, "embedded", tmp_path / "emb")
    files = list((tmp_path / "emb").glob("*.npy"))
    assert [f.stem for f in files] == [first.content_hash]
    kbmod._MATRICES.clear()  # a new process: only the disk cache is left
    second = KnowledgeBase.from_store(store, "embedded", tmp_path / "emb")
    assert np.array_equal(first.matrix, second.matrix)
    # A changed document is a new content hash: embedded anew, never a stale matrix.
    docs = W.kb_documents()
    docs[0] = docs[0].model_copy(update={"text": docs[0].text + " Prices may change."})
    third = KnowledgeBase(docs, "embedded", tmp_path / "emb")
    assert third.content_hash != first.content_hash and len(third) == len(first) + 1
