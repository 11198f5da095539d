"""Speech synthesis shared by the simulator, the bootstrap corpus, evaluation and resynthesize.

* `components.speech.tts` — the piper voice (word timestamps, deterministic, on-disk cache),
  USER_VOICE / MODEL_VOICE, speak_parts. Moved here from components/simulate (same engine
  version and cache keys: nothing cached had to be regenerated).
* `components.speech.backends` — the TtsBackend interface over piper, espeak-ng and Kyutai's
  moshi TTS, and `make_tts(cfg, side)` for the resynthesize stage.

Nothing heavy is imported here: onnxruntime / piper / moshi load only when a voice speaks.
"""
