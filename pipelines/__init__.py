"""Kubeflow pipelines built from ``components/``: each module has ``build(image, params) -> pipeline``.
The image and the parameters' defaults are fixed when compiling (``cafe pipeline compile``)."""
