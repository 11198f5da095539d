"""The transcribe stage against the live S3 server: killed mid-run and rerun, every
conversation is transcribed exactly once, into quarantine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from components.common.stagekit import iter_items
from components.contract import Keys, Transcript, TranscribedItem
from components.ingest.logic import ingest, seal_raw_batch
from components.transcribe.logic import transcribe
from tests.support.stage import grant
from tests.support.conversations import put_conversation
from tests.support.speech import spoken, timeline

pytestmark = pytest.mark.integration

SENTENCES = [
    "What time does the store open on Saturday?",
    "Can I move my plan to the family bundle?",
    "How much does international roaming cost per day?",
]


def _conversations(store, n: int) -> str:
    for i in range(n):
        audio, _ = spoken(SENTENCES[i % len(SENTENCES)], 24000)
        put_conversation(store, "k", f"conv-{i}", seconds=8.0, user=f"user-{i}",
                         user_audio=timeline(8.0, 24000, [(1.0, audio)]))
    return seal_raw_batch(store, "raw/k/")


def test_killed_mid_transcribe_rerun_processes_each_conversation_once(stage_cfg, stage_store):
    s = stage_store
    grant(stage_cfg, *(f"user-{i}" for i in range(3)))
    ingest_id = ingest(stage_cfg, _conversations(s, 3)).manifest.manifest_id
    stage_cfg.transcribe.batch_items = 1  # one conversation per batch: markers land one by one
    marker_prefix = Keys.item_state_prefix("transcribe", ingest_id)

    code = ("import sys; from components.common.config import Config; "
            "from components.transcribe.logic import transcribe; "
            "transcribe(Config.from_json(sys.stdin.read()), sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, ingest_id], stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    proc.stdin.write(stage_cfg.to_json())
    proc.stdin.close()
    deadline = time.monotonic() + 300
    while not list(s.list(marker_prefix)) and time.monotonic() < deadline:
        assert proc.poll() is None, "transcribe finished before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash: no cleanup, no manifest
    proc.wait()
    done_before = len(list(s.list(marker_prefix)))
    assert 1 <= done_before < 3
    assert not list(s.list("manifests/transcribe/"))

    rerun = transcribe(stage_cfg, ingest_id)
    assert rerun.skipped == done_before and rerun.processed == 3 - done_before
    items = [TranscribedItem.model_validate(i) for i in iter_items(s, rerun.manifest)]
    assert sorted(i.conversation_id for i in items) == ["conv-0", "conv-1", "conv-2"]
    assert len(list(s.list(marker_prefix))) == 3  # one marker per conversation
    for item in items:
        t = Transcript.model_validate(s.get_json(item.quarantine_transcript.key,
                                                 version_id=item.quarantine_transcript.version_id))
        assert not t.redacted and t.user_words and 0.5 < t.user_words[0].start < 2.0
