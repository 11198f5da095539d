"""KFP component of the report stage: the pairs report as a KFP HTML artefact (and in MLflow)."""

from kfp import dsl

from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pairs_report_op(tokenize_manifest_id: str, profile: str, overrides: str,
                    report: dsl.Output[dsl.HTML]) -> str:
    """Pair mix, judge score distributions and examples with audio players, rendered by the KFP
    UI; also stored under reports/pairs/ and logged to MLflow. Returns the report's object key."""
    from components.common.kfp_support import config_from_params
    from components.report.logic import write_pairs_report

    key, _ = write_pairs_report(config_from_params(profile, overrides), tokenize_manifest_id,
                                html_path=report.path)
    return key
