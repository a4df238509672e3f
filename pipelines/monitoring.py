"""The monitoring pipeline: monitor -> if the decision is ``retrain``, start the training pipeline on the
traffic window's feedback pairs. A recurring run (``schedule``) or the CronJob in ``manifests/`` runs it.

    cafe pipeline compile --pipeline monitoring --image ghcr.io/cafe-project/cafe:<commit> -o monitoring.yaml
"""

from kfp import dsl

from cafe.config import Params
from components import component
from components.monitor import monitor
from components.retrain import retrain

NAME = "cafe-monitoring"


def build(image: str, params: Params | None = None, params_file: str = "params.yaml"):
    """The pipeline with both steps in ``image`` (lightweight components: the image has kfp and cafe);
    ``params_file`` is the default of the path the steps read (``params`` is unused: the monitor's settings
    are read by the steps, so a new threshold needs no new compile)."""
    monitor_op, retrain_op = component(monitor, image), component(retrain, image)

    @dsl.pipeline(name=NAME, description="Drift monitor on retrieval quality; retrains on the traffic window "
                                         "when quality fell.")
    def monitoring(params_file: str = params_file, overrides: list = [], reference: str = "",  # noqa: B006
                   model: str = "", probe: bool = True, retrain_mode: str = "kfp", kfp_host: str = "",
                   training_package: str = "pipelines/training.yaml"):
        judged = monitor_op(params_file=params_file, overrides=overrides, reference=reference, model=model,
                            probe=probe)
        judged.set_caching_options(False)  # a new window every run
        with dsl.If(judged.outputs["Output"] == "retrain", name="quality-fell"):
            retrain_op(pairs=judged.outputs["pairs"], params_file=params_file, overrides=overrides,
                       mode=retrain_mode, kfp_host=kfp_host,
                       training_package=training_package).set_caching_options(False)

    return monitoring


def schedule(client, package: str, cron: str = "0 0 */6 * * *", experiment: str = "cafe-monitoring"):
    """A KFP recurring run of the compiled pipeline (KFP cron has seconds: every six hours by default)."""
    exp = client.create_experiment(experiment)
    return client.create_recurring_run(experiment_id=exp.experiment_id, job_name=NAME, cron_expression=cron,
                                       pipeline_package_path=package, max_concurrency=1)

