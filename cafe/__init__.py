"""cafe: contrastive-autoregressive fine-tuning (CAFe) of vision-language models, as MLOps."""

__version__ = "0.1.0"
