"""Kyutai's TTS (``moshi.models.tts``): the production backend, voice-matched to the served model.

Kyutai's delayed-streams TTS speaks with a voice given as a voice embedding (``.safetensors``,
multi-speaker models) or an audio prefix (the public-data model), so the chosen replies can be
said in the served model's own voice — the embedded piper voice can only approximate it. The
weights are NOT on the package registries: this backend loads them from

* a hub id (``kyutai/tts-1.6b-en_fr``, the default): moshi's own loader, through the Hugging Face
  cache (a cluster with hub access, or a pre-populated cache);
* ``s3://bucket/prefix/``: a checkpoint folder in the team's model store, downloaded once into
  ``<resynthesize.cache_dir>/kyutai/<hash of the URI and the objects' etags>``;
* a local checkpoint folder (``config.json`` naming the moshi / mimi / tokenizer files).

Anything missing raises TtsUnavailable with what was looked for and how to configure it — the
stage checks before its first item, so a run without weights fails once, clearly, instead of
once per pair. Nothing here can run on the development machines (no weights); the loading code
is moshi's own (CheckpointInfo, TTSModel.from_checkpoint_info), and generation follows
``TTSModel.simple_generate`` with the word times kept.

Word times: the TTS state machine reports the step at which each word entered the text stream
(``TTSResult.all_transcripts``); its audio follows ``delay_steps`` frames later, and moshi drops
two frames at the start of decoding. A word's time is therefore (step - 2 - prefix frames) / frame
rate and it ends where the next word starts (the last one at the end of the audio): accurate to
about a frame (80 ms), not measured here.

Length scale: the TTS has no duration control; ``padding_bonus`` (a bonus on the text stream's
padding logits, > 0 = slower) is set to ``PADDING_BONUS_PER_LOG_SCALE * ln(length_scale)``, a
heuristic. The resynthesize stage measures the result either way (fitted_end in its record).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.speech.tts import Speech, TimedWord, TtsUnavailable

if TYPE_CHECKING:
    from components.common.config import Config

# A voice of Kyutai's voice repository for the resynthesised USER side (no user's voice: a
# speaker of the public Expresso corpus). The model side uses resynthesize.kyutai_voice.
KYUTAI_USER_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"
PADDING_BONUS_PER_LOG_SCALE = 4.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DECODE_DROP = 2  # frames moshi's simple_generate drops at the start of decoding


def _fetch_s3_folder(uri: str, cfg: "Config") -> Path:
    """Download an s3:// checkpoint folder once (see storage.cached_s3_folder)."""
    from components.common.storage import cached_s3_folder

    try:
        return cached_s3_folder(uri, cfg.storage, Path(cfg.resynthesize.cache_dir) / "kyutai",
                                "config.json")
    except FileNotFoundError as exc:
        raise TtsUnavailable(f"no Kyutai TTS checkpoint at {uri}: {exc}") from None


def _folder_checkpoint(folder: Path) -> Any:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise TtsUnavailable(f"{folder} is not a Kyutai TTS checkpoint folder (no config.json)")
    config = json.loads(config_path.read_text())
    from moshi.models import loaders

    files = {name: folder / config.get(key, default) for name, key, default in (
        ("moshi_weights", "moshi_name", loaders.MOSHI_NAME),
        ("mimi_weights", "mimi_name", loaders.MIMI_NAME),
        ("tokenizer", "tokenizer_name", loaders.TEXT_TOKENIZER_NAME))}
    if config.get("lora_name"):
        files["lora_weights"] = folder / config["lora_name"]
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise TtsUnavailable(f"Kyutai TTS checkpoint {folder} lacks {', '.join(missing)}")
    if config.get("mimi_config_name"):
        files["mimi_config_path"] = folder / config["mimi_config_name"]
    return loaders.CheckpointInfo.from_hf_repo(str(folder), config_path=config_path, **files)


def checkpoint_info(source: str, cfg: "Config | None" = None) -> Any:
    """moshi's CheckpointInfo for a hub id, an s3:// folder or a local folder."""
    hint = ("set resynthesize.kyutai_tts_source to a checkpoint folder, an s3:// URI or a "
            "reachable hub id, or use user_tts / model_tts = \"piper\"")
    if source.startswith("s3://"):
        if cfg is None:
            raise TtsUnavailable(f"loading {source} needs the storage config")
        try:
            folder = _fetch_s3_folder(source, cfg)
        except TtsUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - storage errors of any kind: say what failed
            raise TtsUnavailable(f"cannot fetch the Kyutai TTS checkpoint {source}: "
                                 f"{type(exc).__name__}: {exc}; {hint}") from exc
        return _folder_checkpoint(folder)
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_checkpoint(path)
    if not _HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise TtsUnavailable(f"Kyutai TTS source {source!r} is not a folder, an s3:// URI or a "
                             f"hub id; {hint}")
    from moshi.models import loaders

    try:
        return loaders.CheckpointInfo.from_hf_repo(source)
    except Exception as exc:  # noqa: BLE001 - offline hub, missing repo, gated repo, ...
        raise TtsUnavailable(f"Kyutai TTS weights {source!r} are not available here "
                             f"({type(exc).__name__}: {str(exc)[:200]}); {hint}") from exc


class KyutaiSynthesizer:
    """moshi's TTSModel behind the TtsBackend interface (loaded once, on first use)."""

    backend = "kyutai"

    def __init__(self, source: str, voice: str, cfg: "Config | None" = None, *,
                 device: str | None = None, n_q: int = 32, cfg_coef: float = 2.0):
        self.source, self.voice, self.cfg = source, voice, cfg
        self.device = device
        self.n_q, self.cfg_coef = n_q, cfg_coef
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def voice_id(self) -> str:
        return f"{self.source}/{self.voice or 'unset'}"

    def check(self) -> None:
        if not self.voice:
            raise TtsUnavailable("resynthesize.kyutai_voice is empty: the model side needs the "
                                 "voice embedding of the served model's voice")
        self.model()

    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                import torch
                from moshi.models.tts import TTSModel

                info = checkpoint_info(self.source, self.cfg)
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
                self._model = TTSModel.from_checkpoint_info(info, n_q=self.n_q, temp=0.6,
                                                            device=device, dtype=dtype)
            return self._model

    def _voice_path(self, model: Any) -> Path:
        if self.voice.startswith("s3://"):
            if self.cfg is None:
                raise TtsUnavailable(f"loading the voice {self.voice} needs the storage config")
            from components.common.storage import fetch_s3_uri_to_path

            dest = Path(self.cfg.resynthesize.cache_dir) / "kyutai" / "voices" / \
                hashlib.sha256(self.voice.encode()).hexdigest()[:16]
            dest.mkdir(parents=True, exist_ok=True)
            return fetch_s3_uri_to_path(self.voice, dest, self.cfg.storage)
        if self.voice.endswith(".safetensors") and Path(self.voice).is_file():
            return Path(self.voice)
        return model.get_voice_path(self.voice)

    def speak(self, text: str, length_scale: float = 1.0) -> Speech:
        import torch

        text = " ".join(text.split())
        if not text:
            raise ValueError("nothing to say")
        if not self.voice:
            raise TtsUnavailable("resynthesize.kyutai_voice is empty")
        model = self.model()
        with self._lock:
            model.padding_bonus = PADDING_BONUS_PER_LOG_SCALE * math.log(max(length_scale, 1e-3))
            entries = model.prepare_script([text], padding_between=1)
            voice = self._voice_path(model)
            distilled = bool(model.valid_cfg_conditionings)
            if not distilled:
                model.cfg_coef = self.cfg_coef
            if model.multi_speaker:
                attributes = [model.make_condition_attributes(
                    [voice], cfg_coef=self.cfg_coef if distilled else None)]
                prefixes, prefix_frames = None, 0
            else:
                attributes, prefixes = [], [model.get_prefix(voice)]
                prefix_frames = int(prefixes[0].shape[-1])
            result = model.generate([entries], attributes, prefixes=prefixes)
            with model.mimi.streaming(1), torch.no_grad():
                pcms = [torch.clip(model.mimi.decode(frame[:, 1:, :]), -1, 1)
                        for frame in result.frames[model.delay_steps:]]
            pcms = pcms[_DECODE_DROP:]
            end = result.end_steps[0] if result.end_steps[0] is not None else len(pcms)
            chunks = [p[0, 0].float().cpu().numpy() for p in pcms[prefix_frames:end]]
            rate = int(model.mimi.sample_rate)
            frame_rate = float(model.mimi.frame_rate)
            steps = list(result.all_transcripts[0])
        audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(1, np.float32)
        duration = len(audio) / rate
        tokens = text.split()
        starts = [max(0.0, (step - _DECODE_DROP - prefix_frames) / frame_rate) for _, step in steps]
        if len(starts) != len(tokens):  # the script was re-split (":" etc.): spread evenly
            starts = [duration * i / max(len(tokens), 1) for i in range(len(tokens))]
        ends = starts[1:] + [duration]
        words = [TimedWord(t, round(min(s, duration), 4), round(min(max(e, s), duration), 4))
                 for t, s, e in zip(tokens, starts, ends)]
        return Speech(audio=audio, sample_rate=rate, words=words)
