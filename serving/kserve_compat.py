"""Import kserve without letting it read OUR command line.

``kserve.model_server`` parses ``sys.argv`` at import time (``parser.parse_known_args()`` with
argparse's prefix matching), so e.g. ``python -m serving --config x.yaml`` died with "argument
--configure_logging: invalid value 'x.yaml'" and ``pytest --co`` would too. Everything in
serving/ imports kserve through this module, which hides the arguments during that first import
(kserve's defaults are what we want: we build the app and bind the socket ourselves)."""

from __future__ import annotations

import sys


def _import_kserve() -> None:
    if "kserve.model_server" in sys.modules:
        return
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve  # noqa: F401
    finally:
        sys.argv = saved


_import_kserve()

from kserve import InferOutput, InferRequest, InferResponse, Model  # noqa: E402
from kserve.errors import InvalidInput, ModelNotReady  # noqa: E402

__all__ = ["InferOutput", "InferRequest", "InferResponse", "InvalidInput", "Model",
           "ModelNotReady"]
