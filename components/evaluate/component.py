"""KFP component of the evaluate stage: champion vs challenger, then the promotion gate."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(train_manifest_id: str, profile: str, overrides: str,
                report: dsl.Output[dsl.HTML]) -> str:
    """Evaluate the challenger the train manifest registered against the champion on the same
    items (spoken QA, safety, timing, replay length), run the promotion gate, and record its
    decision in S3 and MLflow. The comparison + gate page is the task's HTML artefact. Returns a
    the evaluate manifest id: its stats are the outcome (components/evaluate/logic.py
    EvaluationOutcome): verdict ("promote", "reject", "insufficient" or "no challenger" when
    training skipped — not a failure), the model versions, the decision's S3 key
    (components.evaluate.gate.load_decision reads it) and the MLflow run ids; its input is the
    train manifest, so the run's lineage walks on to the raw batch."""
    from components.common.kfp_support import config_from_params
    from components.evaluate.logic import evaluate_challenger

    _, page, manifest_id = evaluate_challenger(config_from_params(profile, overrides),
                                               train_manifest_id)
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return manifest_id
