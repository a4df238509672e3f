"""Starting the retraining a ``retrain`` decision asks for, with the traffic window's feedback pairs.

Modes: ``kfp`` submits the compiled training pipeline (``pipelines/training.py``) to a KFP endpoint with the
window's pairs as ``train.data`` (plus ``monitor.retrain_overrides``); ``local`` fine-tunes in this process with
the cafe trainer (the embedded default, no cluster); ``record`` only writes the request (what would be started).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from cafe.config import Params


def retrain_request(p: Params, pairs: str, pairs_uri: str = "") -> dict:
    """What to start: the pairs (``pairs_uri``, e.g. the artifact's s3:// URI, where another run can read them;
    default the local path) as ``train.data``, after ``monitor.retrain_overrides``."""
    n = sum(1 for line in Path(pairs).read_text().splitlines() if line.strip()) if Path(pairs).is_file() else 0
    where = pairs_uri or pairs
    return {"pairs": pairs, "pairs_uri": where, "pairs_count": n,
            "overrides": [*p.monitor.retrain_overrides, f"train.data={where}"],
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
            training_package, arguments={"overrides": request["overrides"]}, experiment_name=experiment)
        request["started"] = {"kfp_run_id": run.run_id}
    elif mode == "local":
        from cafe.config import _merge, parse_overrides
        from cafe.data.samples import load_pair_samples
        from cafe.distributed import DistEnv
        from cafe.training.trainer import Trainer

        q = Params.model_validate(_merge(p.model_dump(mode="json"), parse_overrides(request["overrides"])))
        model = Trainer(q.train, q, DistEnv()).fit(load_pair_samples(q.train.data, q.prompts.caption),
                                                   q.train.base_model, resume=False)
        request["started"] = {"local_model": str(model)}
    elif mode == "record":
        request["started"] = None
    else:
        raise ValueError(f"retrain mode {mode!r}: use kfp, local or record")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(request, indent=1))
    return request

