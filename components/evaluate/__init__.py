"""`duplexalign evaluate-model`: behaviour of a model on held-out items of the simulated world
(items.py), served through live.py's reactive users in lockstep waves (serve.py, lockstep.py),
aggregated with Wilson intervals (behaviour.py) and published to S3 and MLflow (publish.py).

Importing the package is cheap (no torch); ``evaluate_model`` loads what it needs."""

from components.evaluate.behaviour import BehaviourReport, ReplyRecord, aggregate, evaluate_model

__all__ = ["BehaviourReport", "ReplyRecord", "aggregate", "evaluate_model"]
