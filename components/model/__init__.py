"""The Moshi-architecture LM: presets (spec), Kyutai-format checkpoints (checkpoint) and the
MLflow model registry (registry). Submodules are imported explicitly by callers, so importing
this package does not pull in torch or mlflow."""
