"""Shared, expensive things of the judge tests: the real local content judge, loaded once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from components.common.config import load_config


@pytest.fixture(scope="session")
def judge_local_backend() -> Iterator[Any]:
    """The embedded local backend (Gemma-3-270M from PyPI), as the stage makes it."""
    from components.judge.backends import make_backend

    backend = make_backend(load_config("ci"))
    yield backend
    backend.close()
