"""``python -m serving``: run the predictor (OIP v2 + WebSocket stream on one port) until SIGTERM.

In a KServe pod the container runs e.g. ``python -m serving --model_dir /mnt/models --host 0.0.0.0
--http_port 8080 --model_name duplexalign``; locally ``python -m serving --model-source champion``
serves the registry's champion on loopback (cfg.serving.host / port)."""

from __future__ import annotations

import argparse
import sys

from components.common.config import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, help="config profile (default: embedded default)")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. serving.max_streams=8 (repeatable)")
    p.add_argument("--model-source", "--model_dir", dest="model_source", default=None,
                   help="alias, models:/ URI, s3:// URI or folder (default serving.model_source)")
    p.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                   help="the /v2/models/<name> name (default serving.model_name)")
    p.add_argument("--model-version", dest="model_version", default=None,
                   help="version tag to report and log (default: derived from the source)")
    p.add_argument("--host", default=None, help="bind address (default serving.host, loopback)")
    p.add_argument("--port", "--http_port", dest="port", type=int, default=None,
                   help="port (default serving.port; 0 = any free port)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from serving.server import serve_main

    args = parse_args(argv)
    overrides = list(args.set)
    for key, value in (("model_name", args.model_name), ("host", args.host),
                       ("port", args.port)):
        if value is not None:
            overrides.append(f"serving.{key}={value}")
    cfg = load_config(args.profile, args.config, overrides)
    return serve_main(cfg, args.model_source, model_version=args.model_version)


if __name__ == "__main__":
    sys.exit(main())
