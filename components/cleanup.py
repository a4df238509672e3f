from kfp.dsl import PipelineTaskFinalStatus


def cleanup(status: PipelineTaskFinalStatus, train_mode: str, run_id: str, params_file: str, overrides: list):
    """The exit handler: when the run failed or was cancelled, delete its PyTorchJob (and so its pods)."""
    from cafe.pipeline_io import job_name, stage_params
    from cafe.stages.train import delete_failed_job

    name = job_name(run_id)
    p, _ = stage_params(params_file, overrides)
    gone = delete_failed_job(p, name, train_mode, status.state)
    print(f"run {run_id}: {status.state}; {p.launch.kind} {p.launch.namespace}/{name}: "
          f"{ {None: 'kept', True: 'deleted', False: 'already gone'}[gone] }")
