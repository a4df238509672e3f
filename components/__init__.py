"""Kubeflow Pipelines v2 components: one file per stage, each one function around one stage function of
``cafe/stages/`` (artifact plumbing only: no behaviour of its own, no branches).

Conventions (every component follows them; ``monitor`` adds ``components/monitor.py`` the same way):

- The file defines one plain function named after the stage with KFP-typed inputs and outputs
  (``Input[Dataset]``, ``Output[Model]``, ``Output[Metrics]``, ``Output[HTML]``, ``Output[Markdown]``) and
  imports everything it uses inside its body: KFP ships the function's source alone into the image.
- It takes ``params_file`` and ``overrides`` (the run's ``-s section.key=value`` list) plus its typed pipeline
  parameters, builds its config with :func:`cafe.pipeline_io.stage_params` and calls its stage.
- The stage reads and writes local or ``s3://`` locations (endpoint: :func:`cafe.pipeline_io.use_endpoint`);
  metrics and reports reach the UI through :func:`cafe.pipeline_io.log_metrics` / ``copy_file``.
- The image is chosen when the pipeline is compiled: :func:`component` binds a function to it.
"""

from __future__ import annotations

from collections.abc import Callable

from kfp import dsl


def component(func: Callable, image: str):
    """``func`` as a lightweight component running in the project image (which already has kfp and cafe)."""
    return dsl.component(func=func, base_image=image, install_kfp_package=False)
