"""Replaying a labelled set as served traffic: the gallery is indexed with the served model, its images are
logged as ingested (image embeddings), every image is searched for with one of its captions through
:class:`~cafe.serving.server.Service`, and the user "chooses" the true image (relevance feedback). Used by the
drift benchmark and its slow test, with the quick contrastive training of the scenario's tiny model."""

from __future__ import annotations

import random
from pathlib import Path

from cafe.evaluation.retrieval import load_karpathy
from cafe.serving.index import Index, embed_images
from cafe.serving.server import Service
from cafe.serving.traffic import TrafficLog


def replay(adapter, karpathy: str | Path, traffic: TrafficLog, version: str, seed: int = 0, top_k: int = 10,
           feedback_share: float = 1.0, batch_size: int = 64) -> dict:
    """Log one window of traffic over the set; returns counts."""
    paths, captions, owner = load_karpathy(karpathy)
    ids = [Path(p).name for p in paths]
    emb = embed_images(adapter, paths, batch_size, desc="gallery")
    index = Index(ids, paths, emb, version)
    traffic.log_request([{"kind": "image", "query": {"image": i}, "embedding": e.tolist(), "results": []}
                         for i, e in zip(ids, emb)], "cafe", version)
    rng = random.Random(seed)
    by_image: dict[int, list[str]] = {}
    for c, o in zip(captions, owner):
        by_image.setdefault(o, []).append(c)
    service = Service(adapter, version, traffic, index, top_k=top_k)
    queries = [rng.choice(by_image[i]) for i in range(len(ids))]
    answers = []
    for lo in range(0, len(queries), batch_size):
        answers += service.search([{"text": q} for q in queries[lo:lo + batch_size]])
    given = 0
    for i, answer in enumerate(answers):
        if rng.random() < feedback_share:
            service.feedback(answer["request_id"], ids[i])
            given += 1
    return {"gallery": len(ids), "searches": len(answers), "feedback": given}


def replay_world(adapter, work: str | Path, kind: str, seed: int, gallery: int, version: str) -> TrafficLog:
    """A fresh drifted world of ``gallery`` images (cafe.data.drift) replayed as one window under ``work``."""
    from cafe.data.drift import write_world

    work = Path(work)
    data = write_world(work / "worlds" / f"{kind}-{seed}", kind, gallery, seed)
    log = TrafficLog(work / "traffic" / f"{version}-{kind}-{seed}")
    replay(adapter, data, log, version, seed=seed, top_k=10)
    return log


def train_contrastive(p, pairs: str | Path, out: str | Path, steps: int, init, progress: bool = True) -> Path:
    """The scenario's quick fine-tune on an instruction folder of pairs (repurposed into ``out/pairs`` with
    ``p.repurpose``'s rules, no validation split): contrastive only (alpha_lm 0), batch 32, LR 3e-3, tau 0.1."""
    from cafe.distributed import DistEnv
    from cafe.stages.repurpose import repurpose
    from cafe.stages.train import train

    cfg = p.train
    cfg.data, cfg.output, cfg.max_steps, cfg.batch_size, cfg.seed = str(Path(out) / "pairs"), str(out), steps, 32, 0
    cfg.optim.lr, cfg.optim.lr_vision, cfg.optim.warmup_ratio = 3e-3, 3e-3, 0.1
    cfg.objective.alpha_lm, cfg.objective.alpha_con, cfg.objective.temperature = 0.0, 1.0, 0.1
    cfg.lm_source = "pairs"  # no L_lm here, so no instruction mixture to replay
    # every pair trains: the scenario's reference and probe are worlds of their own
    repurpose(p.repurpose.model_copy(update={"val_fraction": 0.0}), source=str(pairs), out=cfg.data)
    return train(p, base_model=init, resume=False, dist=DistEnv(), progress=progress)
