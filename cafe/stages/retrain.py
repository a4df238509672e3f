"""Stage `retrain`: what a ``retrain`` decision starts, on the window's feedback pairs (an instruction folder):
the training pipeline on a KFP endpoint (``kfp``), repurpose + fine-tune here with the repurpose and train
stages (``local``), or only the written request (``record``)."""

from __future__ import annotations

from cafe.config import Params
from cafe.monitoring.retrain import start_retraining


def retrain(p: Params, pairs: str, mode: str, out: str, kfp_host: str = "", training_package: str = "",
            pairs_uri: str = "") -> dict:
    """Start (or record) the retraining on the folder ``pairs``; writes the request to ``out`` and returns it."""
    return start_retraining(p, pairs, mode, out, kfp_host=kfp_host, training_package=training_package,
                            pairs_uri=pairs_uri)
