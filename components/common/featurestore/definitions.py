"""The Feast objects of the feature repository: entities, sources and feature views.

One function builds them for a given offline location, so the pipeline (``apply_repo(cfg)``, the
bucket and endpoint from the configuration) and the ``feast`` CLI in ``feature_repo/`` (the local
defaults) apply the SAME definitions. Row schemas (the parquet columns each view's parts hold)
are declared here too, next to the views that read them.

Timestamps: every row has ``event_timestamp`` (when the fact became true: a conversation's end =
started_at + duration_s, for the conversation and each of its pairs; a consent change's
changed_at) and ``created`` (when the row was written; Feast keeps the newest row among those
with the same entity and event time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

from components.contract import JUDGE_AXES

EVENT_TIMESTAMP = "event_timestamp"
CREATED = "created"

CONVERSATION_STATS = "conversation_stats"
USER_CONSENT = "user_consent"
PAIR_FEATURES = "pair_features"
VIEWS = (CONVERSATION_STATS, USER_CONSENT, PAIR_FEATURES)

# entity name -> join key
ENTITY_KEYS = {"conversation": "conversation_id", "user": "user_pseudonym", "pair": "pair_id"}
VIEW_KEY = {CONVERSATION_STATS: "conversation_id", USER_CONSENT: "user_pseudonym",
            PAIR_FEATURES: "pair_id"}

# A ttl of 0: a row never expires in point-in-time joins (a consent given a year ago still holds;
# a conversation's statistics do not go stale). Materialisation always names its interval.
NO_TTL = timedelta(0)

SCORE_FEATURES = tuple(f"score_{axis}" for axis in JUDGE_AXES)

# feature name -> Feast type, per view (the entity key, event_timestamp and created come on top)
FEATURES: dict[str, dict[str, object]] = {
    CONVERSATION_STATS: {
        "duration_s": Float64, "user_turns": Int64, "model_turns": Int64, "overlap_s": Float64,
        "response_latency_s": Float64, **{name: Float64 for name in SCORE_FEATURES},
        "user_pseudonym": String,  # whose conversation (erasure and audits find it by user)
    },
    USER_CONSENT: {"granted": Bool, "changed_at": UnixTimestamp},
    PAIR_FEATURES: {
        "type": String, "judge_margin": Float64, "chosen_words": Int64, "rejected_words": Int64,
        "chosen_duration_s": Float64, "rejected_duration_s": Float64,
        "serving_model_version": String, "user_pseudonym": String, "conversation_id": String,
    },
}

DESCRIPTIONS = {
    CONVERSATION_STATS: "Per conversation: duration, turns per side, seconds both sides spoke at "
                        "once, mean response latency, mean judge score per axis (1-5).",
    USER_CONSENT: "Consent changes exported from the consent registry's history (the registry "
                  "stays the single source of truth; the mix filters on its CURRENT state).",
    PAIR_FEATURES: "Per preference pair: type, judge margin, word counts and durations of both "
                   "sides, the serving model version, its user and conversation.",
}


@dataclass(frozen=True)
class Definitions:
    conversation: Entity
    user: Entity
    pair: Entity
    sources: dict[str, FileSource]
    views: dict[str, FeatureView]

    def objects(self) -> list[object]:
        return [self.conversation, self.user, self.pair, *self.sources.values(),
                *self.views.values()]


def build_definitions(offline_root: str, s3_endpoint: str | None = None) -> Definitions:
    """The repository's objects, reading each view's parquet parts from
    ``<offline_root>/<view>/`` (``s3://bucket/features`` or a local folder)."""
    conversation = Entity(name="conversation", join_keys=["conversation_id"],
                          value_type=ValueType.STRING, description="a logged conversation")
    user = Entity(name="user", join_keys=["user_pseudonym"], value_type=ValueType.STRING,
                  description="a user, by the keyed pseudonym scrub gives them (never a raw id)")
    pair = Entity(name="pair", join_keys=["pair_id"], value_type=ValueType.STRING,
                  description="a preference pair (PreferencePair.pair_id)")
    entity_of = {CONVERSATION_STATS: conversation, USER_CONSENT: user, PAIR_FEATURES: pair}
    root = offline_root.rstrip("/")
    sources: dict[str, FileSource] = {}
    views: dict[str, FeatureView] = {}
    for view in VIEWS:
        sources[view] = FileSource(
            name=f"{view}_source", path=f"{root}/{view}/", file_format=ParquetFormat(),
            timestamp_field=EVENT_TIMESTAMP, created_timestamp_column=CREATED,
            s3_endpoint_override=s3_endpoint or None,
            description=f"parquet parts of {view} (content-addressed, one per write)")
        views[view] = FeatureView(
            name=view, entities=[entity_of[view]], ttl=NO_TTL, online=True,
            schema=[Field(name=name, dtype=dtype)  # type: ignore[arg-type]
                    for name, dtype in FEATURES[view].items()],
            source=sources[view], description=DESCRIPTIONS[view],
            tags={"owner": "duplexalign", "entity_key": VIEW_KEY[view]})
    return Definitions(conversation, user, pair, sources, views)
