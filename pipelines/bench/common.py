"""What the benches share: live services, a dedicated bench bucket, output helpers.

Benches never touch the demo data: each one works in its own bucket, named after the data bucket
with a suffix (``<bucket>-bench-transcribe``, ``<bucket>-bench-ingest``). The ground truth stays
in ``cfg.storage.groundtruth_bucket`` (keys are conversation ids, unique per batch).
Progress goes to stderr; stdout carries a readable table and, last, one JSON line of figures.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.common.config import Config


_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench +{time.monotonic() - _T0:.1f}s] {msg}", file=sys.stderr, flush=True)


def ensure_services(cfg: Config) -> Config:
    """``cfg`` pointed at the running local services, starting them if needed (embedded
    profiles only; the production profile names its endpoints itself)."""
    if cfg.profile == "production":
        return cfg
    from pipelines.services.manager import config_with_live_endpoints, services_up

    try:
        return config_with_live_endpoints(cfg)
    except RuntimeError:
        say("local services are not running: starting them (duplexalign services up)")
        state = services_up(cfg, echo=say)
        return config_with_live_endpoints(cfg, state)


BENCH_SUFFIX = "-bench-"


def bench_bucket(cfg: Config, name: str, run: str | None = None) -> str:
    """``<data bucket>-bench-<name>`` (kept between runs, e.g. the ingest corpus), or with
    ``run`` a bucket of that run alone (``...-<run>``), so concurrent runs never meet."""
    bucket = f"{cfg.storage.bucket}{BENCH_SUFFIX}{name}" + (f"-{run}" if run else "")
    if len(bucket) > 63:
        raise ValueError(f"bench bucket name {bucket!r} is longer than 63 characters")
    return bucket


def with_bucket(cfg: Config, bucket: str) -> Config:
    new = cfg.model_copy(deep=True)
    new.storage.bucket = bucket
    return new


def seaweedfs_cpu_seconds(cfg: Config) -> float | None:
    """CPU seconds used so far by the local SeaweedFS (process and children); None when the
    object store is not a local SeaweedFS of this state dir."""
    if cfg.profile == "production":
        return None
    try:
        import psutil

        from pipelines.services.manager import load_state

        state = load_state(cfg)
        if state is None or state.seaweedfs is None or not state.seaweedfs.is_running():
            return None
        proc = psutil.Process(state.seaweedfs.process.pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total
    except Exception:  # noqa: BLE001 - a diagnostic figure only
        return None


class OtherLoad:
    """Share of the machine's CPU used by OTHER processes during a timed section (everything
    but this process and, when it is a local one, the object store), steal time included.
    On a shared box this tells a disturbed timing from a real one."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    @staticmethod
    def _own() -> float:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> "OtherLoad":
        self.share: float | None = None
        self._t = time.monotonic()
        self._busy0, self._own0 = self._busy(), self._own()
        self._store0 = seaweedfs_cpu_seconds(self.cfg) or 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        wall = time.monotonic() - self._t
        others = ((self._busy() - self._busy0) - (self._own() - self._own0)
                  - ((seaweedfs_cpu_seconds(self.cfg) or 0.0) - self._store0))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.share = max(0.0, others) / (wall * (cpus or 1)) if wall > 0 else None


@contextmanager
def bench_lock(cfg: Config, name: str) -> Iterator[None]:
    """One bench of a kind at a time on this machine (state dir): two concurrent runs would
    disturb each other's timings, and the ingest bench shares its corpus bucket."""
    import fcntl

    path = Path(cfg.services.state_dir).expanduser() / f"bench-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another `bench {name}` runs on this machine: waiting for it to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_id() -> str:
    import secrets

    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(2)


def fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if spec else str(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def emit(text: str, figures: dict[str, Any]) -> None:
    """The readable report, then the final JSON line (always the last line of stdout)."""
    print(text, flush=True)
    print(json.dumps(figures, sort_keys=True, default=str), flush=True)
