"""KFP component of the validate stage: the data quality gate, its report a KFP HTML artefact."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_op(tokenize_manifest_id: str, profile: str, overrides: str,
                report: dsl.Output[dsl.HTML]) -> str:
    """Great Expectations suites over the transcripts, judgements, pairs and pair tensors of the
    tokenize manifest's chain. The report (GX data docs inlined into one page) is written to the
    KFP artefact, the bucket and MLflow FIRST; then a failed critical expectation fails the task,
    naming it, so nothing downstream trains. Returns the validate manifest id."""
    from components.common.kfp_support import config_from_params
    from components.validate.logic import validate_dataset

    outcome = validate_dataset(config_from_params(profile, overrides), tokenize_manifest_id)
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write(outcome.html)
    outcome.raise_for_critical()
    return outcome.manifest_id
