"""The transcribe stage transcribes several conversations per batch (shared Whisper windows):
each transcript holds only its own conversation's words, on its own timeline, and a
conversation whose audio cannot be read fails alone."""

from __future__ import annotations

import jiwer
import pytest

import components.transcribe.logic as stage_logic
from components.common.stagekit import iter_items, iter_rejects
from components.contract import IngestedItem, Transcript, TranscribedItem
from components.ingest.logic import ingest, seal_raw_batch
from tests.support.conversations import put_conversation
from tests.support.speech import spoken, timeline
from tests.support.stage import grant

pytestmark = pytest.mark.integration

RATE = 24000
CONVERSATIONS = {  # id -> (user sentence, onset s, channel s)
    "conv-a": ("What time does the store open on Saturday?", 1.0, 8.0),
    "conv-b": ("Can I move my plan to the family bundle?", 3.5, 9.0),
    "conv-c": ("How much does international roaming cost per day?", 0.6, 7.0),
    "conv-x": ("Please cancel my subscription today.", 1.0, 6.0),  # its audio goes missing
}


def test_batched_conversations_stay_apart_and_fail_alone(stage_cfg, stage_store, monkeypatch):
    from whisper.normalizers import EnglishTextNormalizer

    s = stage_store
    grant(stage_cfg, *(f"user-{cid}" for cid in CONVERSATIONS))
    onsets = {}
    for cid, (text, offset, seconds) in CONVERSATIONS.items():
        audio, words = spoken(text, RATE)
        onsets[cid] = offset + words[0][1]
        put_conversation(s, "k", cid, seconds=seconds, user=f"user-{cid}", rate=RATE,
                         user_audio=timeline(seconds, RATE, [(offset, audio)]))
    ing = ingest(stage_cfg, seal_raw_batch(s, "raw/k/"))
    items = {i.conversation_id: i for i in map(IngestedItem.model_validate,
                                               iter_items(s, ing.manifest))}
    assert sorted(items) == sorted(CONVERSATIONS)
    missing = items["conv-x"].objects["audio.wav"]
    assert s.delete_all_versions(missing.key) >= 1

    batches: list[int] = []
    real = stage_logic.transcribe_many

    def spy(model, channels, *args, **kwargs):
        batches.append(len(channels))
        return real(model, channels, *args, **kwargs)

    monkeypatch.setattr(stage_logic, "transcribe_many", spy)
    run = stage_logic.transcribe(stage_cfg, ing.manifest.manifest_id)
    assert batches == [3]  # the three readable conversations, transcribed together

    rejects = list(iter_rejects(s, run.manifest))
    assert [(r.item, r.code) for r in rejects] == [("conv-x", "internal")]
    norm = EnglishTextNormalizer()
    done = [TranscribedItem.model_validate(i) for i in iter_items(s, run.manifest)]
    assert sorted(i.conversation_id for i in done) == ["conv-a", "conv-b", "conv-c"]
    for item in done:
        ref = item.quarantine_transcript
        t = Transcript.model_validate(s.get_json(ref.key, version_id=ref.version_id))
        text, _, seconds = CONVERSATIONS[item.conversation_id]
        hyp = norm(" ".join(w.word for w in t.user_words))
        assert jiwer.wer(norm(text), hyp) <= 0.15, (text, hyp)
        # nothing from another conversation of the batch
        foreign = {w for c, (other, _, _) in CONVERSATIONS.items() if c != item.conversation_id
                   for w in norm(other).split()} - set(norm(text).split())
        assert not set(hyp.split()) & foreign, (text, hyp)
        assert abs(t.user_words[0].start - onsets[item.conversation_id]) <= 0.5
        assert t.user_words[-1].end <= seconds
        assert item.user_words == len(t.user_words)
