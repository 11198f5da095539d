"""Shared by the features and mix tests: a contract-valid chain, a validate manifest on top of
its tokenize manifest (the gate passed), and the features stage run on it."""

from __future__ import annotations

from dataclasses import dataclass

from components.common.config import Config
from components.common.stagekit import ManifestWriter
from components.common.storage import ObjectStore
from components.contract import Manifest
from components.features.logic import build_features
from tests.support.chain import Chain, write_chain


def passed_gate(cfg: Config, tokenize_manifest_id: str, dataset_version: str) -> str:
    """A "validate" manifest as the gate writes it when nothing failed (its input: tokenize)."""
    store = ObjectStore.from_config(cfg.storage)
    writer = ManifestWriter(store, "validate", tokenize_manifest_id)
    return writer.close({"dataset_version": dataset_version, "passed": [], "failed": [],
                         "critical_failed": []}).manifest_id


@dataclass
class FeatureChain:
    chain: Chain
    validate_id: str
    features: Manifest


def feature_chain(cfg: Config, **chain_args) -> FeatureChain:
    chain = write_chain(cfg, **chain_args)
    validate_id = passed_gate(cfg, chain.manifests["tokenize"], chain.dataset_version)
    return FeatureChain(chain, validate_id, build_features(cfg, validate_id))
