"""The monitoring pipeline: monitor -> if the decision is ``retrain``, start the training pipeline on the
traffic window's feedback pairs. A recurring run (``schedule``) or the CronJob in ``manifests/`` runs it.

    python -m pipelines.monitoring --image ghcr.io/cafe-project/cafe:<commit> -o monitoring.yaml
"""


import argparse

from kfp import compiler, dsl

from components.monitor import monitor
from components.retrain import retrain

NAME = "cafe-monitoring"
DEFAULT_IMAGE = "ghcr.io/cafe-project/cafe:0.1.0"


def build(image: str = DEFAULT_IMAGE):
    """The pipeline with both steps in ``image`` (lightweight components: the image has kfp and cafe)."""
    monitor_op = dsl.component(func=monitor, base_image=image, install_kfp_package=False)
    retrain_op = dsl.component(func=retrain, base_image=image, install_kfp_package=False)

    @dsl.pipeline(name=NAME, description="Drift monitor on retrieval quality; retrains on the traffic window "
                                         "when quality fell.")
    def monitoring(params_file: str = "params.yaml", overrides: list = [], reference: str = "",  # noqa: B006
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("-o", "--out", default="monitoring.yaml")
    args = ap.parse_args()
    compiler.Compiler().compile(build(args.image), args.out)
    print(f"{NAME} ({args.image}) -> {args.out}")


if __name__ == "__main__":
    main()
