"""The feature repository's objects, for the `feast` CLI (feast apply imports this file).

They are built by ``components/common/featurestore/definitions.py`` — the same function the pipeline uses
(``duplexalign features apply``) — so the CLI and the pipeline can never register different
views. Where the offline parquet lives comes from the environment (the local defaults
otherwise):

* ``DUPLEXALIGN_FEATURES_OFFLINE_ROOT`` — default ``s3://duplexalign/features``
* ``DUPLEXALIGN_FEATURES_S3_ENDPOINT`` — default ``http://127.0.0.1:8333`` (the local SeaweedFS)

Entities: ``conversation`` (conversation_id), ``user`` (user_pseudonym), ``pair`` (pair_id).
Feature views: ``conversation_stats``, ``user_consent``, ``pair_features`` (README.md).
"""

import os

from components.common.featurestore.definitions import build_definitions

_defs = build_definitions(
    os.environ.get("DUPLEXALIGN_FEATURES_OFFLINE_ROOT", "s3://duplexalign/features"),
    os.environ.get("DUPLEXALIGN_FEATURES_S3_ENDPOINT", "http://127.0.0.1:8333"),
)

conversation = _defs.conversation
user = _defs.user
pair = _defs.pair

conversation_stats_source = _defs.sources["conversation_stats"]
user_consent_source = _defs.sources["user_consent"]
pair_features_source = _defs.sources["pair_features"]

conversation_stats = _defs.views["conversation_stats"]
user_consent = _defs.views["user_consent"]
pair_features = _defs.views["pair_features"]
