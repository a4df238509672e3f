"""The monitoring pipeline: monitor -> if the decision is ``retrain``, start the training pipeline on the
traffic window's feedback pairs. A recurring run (``schedule``) or the CronJob in ``manifests/`` runs it.
The UI shows the monitor step's decision page (``decision_page``) and Evidently's reports (``evidently_text``,
``evidently_images``) as its HTML outputs.

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
        """Monitor the served version's traffic window; retrain on its feedback pairs when quality fell.

        Args:
            params_file: Params file the steps read (a path inside the image).
            overrides: Extra section.key=value overrides applied by both steps.
            reference: Monitor reference folder; empty: the one registered with monitor.ref.
            model: Model folder for the probe set; empty: the registry's monitor.ref version.
            probe: Re-embed the probe set with the served model.
            retrain_mode: kfp (start the training pipeline), local (fine-tune in the step) or record (only write the request).
            kfp_host: KFP endpoint for retrain_mode kfp.
            training_package: Compiled training pipeline YAML for retrain_mode kfp.
        """
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

