"""The one typed configuration of duplexalign.

Every knob lives here, in nested pydantic models. A value is resolved in this order (later wins):

1. the defaults below,
2. the named profile (`ci`, `demo`, `production`, `bench`) — sizes and budgets,
3. a YAML file (``--config my.yaml``),
4. dotted overrides (``--set transcribe.model_source=s3://models/whisper-small`` on the CLI, or
   the pipeline's ``overrides`` parameter, a JSON object of the same dotted keys).

Secrets are never fields: configuration only says *where* a secret comes from (a file path or an
environment variable name), so a dumped config is safe to log, to store in MLflow and to put in a
compiled pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

ProfileName = Literal["ci", "demo", "production", "bench"]


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML file or an override must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Section):
    """Where the object store is and how to authenticate (any S3 endpoint)."""

    endpoint: str = "127.0.0.1:8333"
    secure: bool = False
    region: str = "us-east-1"
    bucket: str = "duplexalign"
    # Ground truth of the simulated world lives in its own bucket, which no pipeline stage reads.
    groundtruth_bucket: str = "duplexalign-groundtruth"
    # JSON file {"access_key": ..., "secret_key": ...}; the local services write one. In a cluster
    # the env vars below (from a Kubernetes Secret) take precedence.
    credentials_file: str = ".duplexalign/secrets/s3-credentials.json"
    access_key_env: str = "DUPLEXALIGN_S3_ACCESS_KEY"
    secret_key_env: str = "DUPLEXALIGN_S3_SECRET_KEY"
    # Admin URL of the SeaweedFS master when the endpoint is a SeaweedFS we run (the local
    # services fill it in): lets stages reclaim the disk space of deleted objects (vacuum).
    # Empty = the object store reclaims space on its own (AWS S3 and most managed stores).
    seaweedfs_master_url: str = ""


class MlflowConfig(_Section):
    tracking_uri: str = "http://127.0.0.1:5000"
    experiment: str = "duplexalign"


class ConsentConfig(_Section):
    """The consent registry: sqlite locally, PostgreSQL in a cluster (password via env/secret)."""

    dsn: str = "sqlite:///.duplexalign/state/consent.db"
    password_env: str = "DUPLEXALIGN_CONSENT_DB_PASSWORD"


class ServicesConfig(_Section):
    """Local (embedded) platform services, started by ``duplexalign services up``."""

    state_dir: str = ".duplexalign"
    host: str = "127.0.0.1"
    s3_port: int = 8333
    mlflow_port: int = 5000
    startup_timeout_s: float = 60.0
    # SeaweedFS's internal servers (0 = a free loopback port, reused across restarts when still
    # free); their gRPC ports are always picked free, so several instances run side by side.
    seaweedfs_master_port: int = 0
    seaweedfs_volume_port: int = 0
    seaweedfs_filer_port: int = 0
    # SIGTERM, then SIGKILL after this long (SeaweedFS needs ~17 s to stop gracefully).
    stop_timeout_s: float = 30.0


class SimulateConfig(_Section):
    """The simulated world: how many conversations and which problems are planted how often."""

    conversations: int = 12
    seed: int = 7
    turns_min: int = 2
    turns_max: int = 4
    # Rates of planted problems per model reply (each judge axis has one).
    rate_wrong_fact: float = 0.15
    rate_unsafe_compliance: float = 0.08
    rate_unhelpful: float = 0.08
    rate_off_tone: float = 0.08
    rate_instruction_missed: float = 0.08
    rate_interruption: float = 0.15
    rate_silence: float = 0.12
    # Fraction of user turns that carry planted PII.
    rate_pii: float = 0.35
    # Fraction of conversations logged as one stereo WAV (left = model, right = user), as in the
    # public Moshi fine-tuning format; the rest as separate channel files.
    rate_stereo: float = 0.5
    # Fraction of simulated users who have NOT given consent (ingest must drop them).
    rate_no_consent: float = 0.1
    model_version: str = "scripted-v0"
    # Fraction of model replies to a PII-carrying user turn that repeat the PII back ("Thanks
    # Maria, I'll text 415-555-0142"): scrub must redact the model's text and mute its audio too.
    rate_pii_echo: float = 0.5
    # Fraction of long (> 3 s) user turns during which the model says a backchannel ("mm-hm").
    rate_backchannel: float = 0.3
    # Fraction of conversations (after the first two) by a user who already talked to the model.
    rate_repeat_user: float = 0.4
    # Level of the (seeded) background noise added to both channels, in dBFS.
    noise_floor_dbfs: float = -70.0
    # On-disk cache of synthesised speech (by SHA-256 of voice, settings and text).
    tts_cache_dir: str = ".duplexalign/cache/tts"


class IngestConfig(_Section):
    # Conversations longer than this are rejected (Moshi's context is 4 min; logs can be longer,
    # but an hour is the hard cap we validate streaming).
    max_duration_s: float = 3600.0
    min_duration_s: float = 0.5
    # Common rates are resampled to the canonical ones, anything else is rejected.
    accepted_sample_rates: list[int] = Field(
        default_factory=lambda: [8000, 16000, 22050, 24000, 32000, 44100, 48000]
    )
    canonical_sample_rate: int = 24000
    # Channel lengths may differ by this much before the item is rejected.
    channel_length_tolerance_s: float = 0.5


class TranscribeConfig(_Section):
    # A named checkpoint ("tiny.en"), a local path (CTranslate2 folder or openai-whisper .pt),
    # or an s3:// URI into the team's model store (production: a larger Whisper).
    model_source: str = "tiny.en"
    model_cache_dir: str = ".duplexalign/cache/models"
    # Optimised path (VAD + packing); False = the plain whisper_timestamped loop (for benches).
    packed: bool = True
    # Conversations whose speech is packed together into shared Whisper windows (packed path):
    # short user turns from several conversations fill one 30 s window instead of one each.
    batch_items: int = Field(default=8, ge=1)


class ScrubConfig(_Section):
    # The keyed hash that pseudonymises user ids: the key comes from a secret, never from config.
    pseudonym_key_env: str = "DUPLEXALIGN_PSEUDONYM_KEY"
    pseudonym_key_file: str = ".duplexalign/secrets/pseudonym.key"
    # Mute the model's audio this long around each word that echoed PII.
    mute_padding_s: float = 0.05
    # Reclaim deleted bytes (SeaweedFS vacuum) after the stage.
    vacuum_after: bool = True


class PipelineConfig(_Section):
    name: str = "duplexalign-alignment"
    # Base image of every lightweight component (the project's image; cluster issue builds it).
    image: str = "ghcr.io/duplexalign/duplexalign:0.1.0"
    pipeline_root: str = ".duplexalign/pipeline-root"


class Config(_Section):
    profile: ProfileName = "demo"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    consent: ConsentConfig = Field(default_factory=ConsentConfig)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    transcribe: TranscribeConfig = Field(default_factory=TranscribeConfig)
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.model_validate_json(text)


# Profiles set sizes and budgets; docs/budgets.md has the table of what each costs.
PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"simulate": {"conversations": 6, "turns_min": 2, "turns_max": 3}},
    "demo": {"simulate": {"conversations": 12}},
    "bench": {"simulate": {"conversations": 24}},
    "production": {
        "storage": {"endpoint": "s3.amazonaws.com", "secure": True, "credentials_file": ""},
        "mlflow": {"tracking_uri": "http://mlflow.duplexalign.svc:5000"},
        "consent": {"dsn": "postgresql://duplexalign@consent-db.duplexalign.svc:5432/consent"},
        "transcribe": {"model_source": "s3://duplexalign-models/whisper/large-v3"},
        "pipeline": {"pipeline_root": "s3://duplexalign/pipeline-root"},
    },
}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` → ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML (so numbers,
    booleans and lists get their types; pydantic then validates them)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form section.key=value")
    dotted, raw = item.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw != "" else ""
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return value


def load_config(
    profile: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults ← profile ← YAML file ← overrides."""
    data: dict[str, Any] = {}
    file_data: dict[str, Any] = {}
    if yaml_path:
        file_data = yaml.safe_load(Path(yaml_path).read_text()) or {}
    name = profile or file_data.get("profile") or os.environ.get("DUPLEXALIGN_PROFILE") or "demo"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    data = deep_merge(data, PROFILES[name])
    data = deep_merge(data, file_data)
    data["profile"] = name
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            data = deep_merge(data, parse_override(f"{key}={json.dumps(value)}"))
    else:
        for item in overrides or []:
            data = deep_merge(data, parse_override(item))
    return Config.model_validate(data)
