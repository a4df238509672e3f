"""Starting the retraining a ``retrain`` decision asks for, with the traffic window's feedback pairs (an
instruction folder, :mod:`cafe.data.pair_folder`).

Modes: ``kfp`` submits the compiled training pipeline (``pipelines/training.py``) to a KFP endpoint with the
window folder's URI as its ``data_uri`` (its repurpose step makes the shards) and ``monitor.retrain_overrides``
as its ``overrides``; ``local`` repurposes the folder into shards under ``train.output`` and fine-tunes on them
in this process with the cafe trainer (the embedded default, no cluster); ``record`` only writes the request
(what would be started).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from cafe.config import Params


def retrain_request(p: Params, pairs: str, pairs_uri: str = "") -> dict:
    """What to start: the training pipeline's arguments, ``data_uri`` = the window folder (``pairs_uri``, e.g.
    the artifact's s3:// URI, where another run can read it; default the local path) and
    ``overrides`` = ``monitor.retrain_overrides``."""
    from cafe.data.pair_folder import count_records

    where = pairs_uri or pairs
    return {"pairs": pairs, "pairs_count": count_records(pairs),
            "arguments": {"data_uri": where, "overrides": list(p.monitor.retrain_overrides)},
            "requested_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def start_retraining(p: Params, pairs: str, mode: str, out: str, kfp_host: str = "",
                     training_package: str = "", experiment: str = "cafe-retraining", pairs_uri: str = "") -> dict:
    """Start (or record) the retraining; writes and returns the request with what was started."""
    request = retrain_request(p, pairs, pairs_uri if mode == "kfp" else "")
    if request["pairs_count"] == 0:
        raise ValueError(f"{pairs}: the window has no feedback-labelled pairs to retrain on")
    if mode == "kfp":
        import kfp

        if not (kfp_host and training_package):
            raise ValueError("mode kfp needs the KFP endpoint (kfp_host) and the compiled training pipeline package")
        run = kfp.Client(host=kfp_host).create_run_from_pipeline_package(
            training_package, arguments=request["arguments"], experiment_name=experiment)
        request["started"] = {"kfp_run_id": run.run_id}
    elif mode == "local":
        request["started"] = _fine_tune_here(p, pairs)
    elif mode == "record":
        request["started"] = None
    else:
        raise ValueError(f"retrain mode {mode!r}: use kfp, local or record")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(request, indent=1))
    return request


def _fine_tune_here(p: Params, pairs: str) -> dict:
    """``local``: the folder -> shards at ``<train.output>/pairs`` (after the overrides) -> the train stage."""
    from cafe.config import _merge, parse_overrides
    from cafe.distributed import DistEnv
    from cafe.stages.repurpose import repurpose
    from cafe.stages.train import train

    q = Params.model_validate(_merge(p.model_dump(mode="json"), parse_overrides(p.monitor.retrain_overrides)))
    q.train.data = str(Path(q.train.output) / "pairs")
    stats = repurpose(q.repurpose, source=pairs, out=q.train.data)
    model = train(q, resume=False, dist=DistEnv())
    return {"local_model": str(model), "data": q.train.data, "data_version": stats["data_version"],
            "kept": stats["kept"]}
