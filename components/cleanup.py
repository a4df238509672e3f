from kfp.dsl import PipelineTaskFinalStatus


def cleanup(status: PipelineTaskFinalStatus, train_mode: str, run_id: str, params_file: str, overrides: list):
    """The exit handler: when the run failed or was cancelled, delete its PyTorchJob (and so its pods)."""
    from cafe.pipeline_io import job_name, stage_params

    name = job_name(run_id)
    print(f"run {run_id}: {status.state}")
    if train_mode != "cluster" or status.state == "SUCCEEDED":
        return
    from cafe.cluster.submit import client_configuration, delete_job

    p, _ = stage_params(params_file, overrides)
    gone = delete_job(name, kind=p.launch.kind, namespace=p.launch.namespace,
                      cfg=client_configuration(p.launch.kubeconfig, p.launch.context))
    print(f"{p.launch.kind} {p.launch.namespace}/{name}: {'deleted' if gone else 'already gone'}")
