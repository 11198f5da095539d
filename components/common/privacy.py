"""Pseudonymous user ids: a keyed hash, so ids cannot be reversed or re-derived without the key.

The consent registry, every manifest and every stored output use the pseudonym only; the
serving side's raw user id exists in raw/ metadata until scrub deletes it. The key comes from a
secret (env var in a cluster, a 0600 file locally) and is never logged or put in a config dump.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from components.common.config import ScrubConfig

PSEUDONYM_PREFIX = "p-"


def load_pseudonym_key(cfg: ScrubConfig, create: bool = False) -> bytes:
    """The pseudonymisation key: env var (cluster Secret) first, then the local key file.

    With ``create=True`` a missing local key file is generated (embedded default only)."""
    env_value = os.environ.get(cfg.pseudonym_key_env)
    if env_value:
        return env_value.encode()
    path = Path(cfg.pseudonym_key_file)
    if not path.exists():
        if not create:
            raise RuntimeError(
                f"no pseudonymisation key: set ${cfg.pseudonym_key_env} or create {path} "
                "(`duplexalign services up` creates one for the embedded default)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pseudonymise(user_id: str, key: bytes) -> str:
    """HMAC-SHA256 of the raw user id, truncated to 128 bits (collisions stay negligible)."""
    digest = hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:32]

