"""Shared fixtures of the pair tests: the real knowledge base with the real MiniLM, once."""

from __future__ import annotations

import pytest

from components.common.config import Config
from components.common.kb import KnowledgeBase


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    # The simulated operator's FAQ: the same documents `publish_kb` puts under kb/ (tests only;
    # the pipeline reads kb/ from the store and never imports the simulator).
    from components.simulate.world import kb_documents

    return KnowledgeBase(kb_documents())


@pytest.fixture
def cfg() -> Config:
    return Config()
