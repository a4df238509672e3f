"""Replaying a labelled set as served traffic: the gallery is indexed with the served model, its images are
logged as ingested (image embeddings), every image is searched for with one of its captions through
:class:`~cafe.serving.server.Service`, and the user "chooses" the true image (relevance feedback). Used by the
drift benchmark and its slow test."""

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
