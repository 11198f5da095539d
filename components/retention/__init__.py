"""Retention periods per bucket prefix (docs/privacy-erasure.md#retention)."""
