"""Erasure on request: one user removed from every store (docs/privacy-erasure.md)."""
