"""KFP component of the train stage, and how its task asks for a GPU node on a cluster."""

from kfp import dsl

from components.common.config import GpuPoolConfig
from components.common.kfp_support import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(mix_manifest_id: str, profile: str, overrides: str, pipeline_run: str,
             report: dsl.Output[dsl.HTML]) -> str:
    """Preference-train the champion on the training mix (the pairs the feature-based mix builder
    selected from the validated dataset; DPO-LN by default, early stopping on held-out pairs and
    generations), register the best checkpoint as
    the `challenger`; the training curves page is the task's HTML artefact. Returns the train
    manifest id (its stats: run id, challenger version, where and why it stopped)."""
    import html

    from components.common.kfp_support import config_from_params
    from components.common.storage import ObjectStore
    from components.train.logic import report_key, train

    cfg = config_from_params(profile, overrides)
    result = train(cfg, mix_manifest_id, pipeline_run=pipeline_run, skip_if_too_few=True)
    if result.report:
        ObjectStore.from_config(cfg.storage).download_file(report_key(result.run_key),
                                                           report.path)
    else:  # skipped (too few pairs): the artefact says why
        with open(report.path, "w", encoding="utf-8") as fh:
            fh.write(f"<!doctype html><p>No training: {html.escape(result.stop_reason)}</p>")
    return result.manifest_id


def request_gpu(task: dsl.PipelineTask, pool: GpuPoolConfig) -> dsl.PipelineTask:
    """Accelerator type and limit, CPU/memory requests, node selector and tolerations of the GPU
    node pool (kfp-kubernetes); the local runner ignores them."""
    from kfp import kubernetes

    task.set_accelerator_type(pool.accelerator_type)
    task.set_accelerator_limit(pool.accelerator_limit)
    task.set_cpu_request(str(pool.cpu_request))
    task.set_memory_request(str(pool.memory_request))
    for label, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for tol in pool.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator,
                                  value=tol.value or None, effect=tol.effect)
    return task
