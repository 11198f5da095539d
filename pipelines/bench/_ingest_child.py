"""One measured ingest run in a fresh interpreter (started by pipelines.bench.ingest).

Reads {"config": <Config JSON>, "manifest_id": ..., "concurrency": ...} on stdin, runs the
ingest stage, prints one JSON line of figures on stdout. Peak RSS is this process image's own
high-water mark, VmHWM of /proc/self/status, so every size is measured in isolation.
(Not getrusage's ru_maxrss: Linux carries the forking parent's high-water mark across exec
into the child's ru_maxrss, so a child started from a big parent would report the parent's.)
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _rss_bytes() -> int:
    """Peak resident set size of this process image (bytes)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: KiB (macOS: B)


def main() -> int:
    payload = json.loads(sys.stdin.read())
    from components.common.config import Config
    from components.ingest.logic import ingest

    cfg = Config.from_json(payload["config"])
    rss_imports = _rss_bytes()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    run = ingest(cfg, payload["manifest_id"], concurrency=int(payload["concurrency"]))
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "seconds": seconds,
        "processed": run.processed,
        "skipped": run.skipped,
        "counts": run.manifest.counts,
        "manifest_id": run.manifest.manifest_id,
        "peak_rss_bytes": _rss_bytes(),
        "rss_after_imports_bytes": rss_imports,
        "cpu_seconds": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "process_cpu_seconds": r1.ru_utime + r1.ru_stime,  # imports included
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
