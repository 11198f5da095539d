"""`duplexalign deploy`: the served model's KServe InferenceService and its canary → promote /
rollback, as GitOps changes (default) or applied directly; see docs/deploy.md.

Importing the package is cheap (no torch, no MLflow, no Kubernetes client)."""
