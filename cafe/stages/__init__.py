"""The pipeline's stages, one public function per module, each taking the typed config and its input and
output locations and returning what it produced:

    synth -> repurpose -> pretrain (cached) -> train -> evaluate (base, CAFe) -> gate -> register (+ the monitor
    reference) -> promote -> serve -> monitor -> retrain

The CLI (`cafe/cli/`), `dvc.yaml`, the Kubeflow components (`components/`), the retraining step and the main
job (`cafe demo`) call these functions and nothing below them. See docs/pipeline.md for the stage map.
"""
