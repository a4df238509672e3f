"""Training with mined hard negatives: L_con with negatives equals a direct implementation, the gradient-cached
step gives the uncached gradients (one process and two), the shared-prefix step packs with them, and the
training data carries the negatives."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cafe.config import MineConfig
from cafe.data.samples import collate
from cafe.distributed import average_gradients
from cafe.objective import caption_ids, info_nce
from cafe.training.step import loss_terms
from tests.conftest import make_adapter, pairs
from tests.test_grad_cache import _assert_same
from tests.multiproc import free_port, spawn


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _direct(image, text, neg_text, neg_image, mask, tau, captions, hardness):
    """Eq. 1 written out term by term, each negative's exp weighted by exp(hardness * cosine); ``mask`` [B, n]
    for both directions or [B, 2, n] (texts' mask, images' mask)."""
    norm = [" ".join(c.lower().split()) for c in captions]
    masks = (mask, mask) if mask.dim() == 2 else (mask[:, 0], mask[:, 1])
    total = 0.0
    for queries, keys, negatives, mask in ((image, text, neg_text, masks[0]), (text, image, neg_image, masks[1])):
        for i in range(len(queries)):
            pos = math.exp(float(queries[i] @ keys[i]) / tau)
            denominator = pos
            for j in range(len(keys)):
                if j != i and norm[j] != norm[i]:
                    s = float(queries[i] @ keys[j])
                    denominator += math.exp(hardness * s) * math.exp(s / tau)
            for m in range(negatives.shape[1]):
                if mask[i, m]:
                    s = float(queries[i] @ negatives[i, m])
                    denominator += math.exp(hardness * s) * math.exp(s / tau)
            total += -math.log(pos / denominator) / len(queries)
    return total / 2


@pytest.mark.parametrize("hardness", [0.0, 2.0])
def test_loss_with_negatives_equals_direct_implementation(hardness):
    b, n, d, tau = 5, 3, 8, 0.1
    image, text = _unit(b, d, seed=0), _unit(b, d, seed=1)
    neg_text, neg_image = _unit(b, n, d, seed=2), _unit(b, n, d, seed=3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    captions = ["a red circle", "a blue square", "A red  circle", "a green cross", "a white diamond"]
    got = info_nce(image, text, tau, caption_ids(captions), "mean", neg_text, neg_image, mask, hardness)
    assert got.item() == pytest.approx(_direct(image, text, neg_text, neg_image, mask, tau, captions, hardness),
                                       rel=1e-5)


@pytest.mark.parametrize("hardness", [0.0, 2.0])
def test_per_direction_masks_equal_direct_implementation(hardness):
    """Attribute swaps give a pair more text negatives than image ones: each direction has its own mask."""
    b, n, d, tau = 4, 3, 8, 0.1
    image, text = _unit(b, d, seed=7), _unit(b, d, seed=8)
    neg_text, neg_image = _unit(b, n, d, seed=9), _unit(b, n, d, seed=10)
    mask = torch.tensor([[[1, 1, 1], [0, 0, 0]], [[1, 1, 0], [1, 0, 0]], [[0, 0, 0], [1, 1, 1]],
                         [[1, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    captions = ["a red circle", "a blue square", "a green cross", "a white diamond"]
    got = info_nce(image, text, tau, caption_ids(captions), "mean", neg_text, neg_image, mask, hardness)
    assert got.item() == pytest.approx(_direct(image, text, neg_text, neg_image, mask, tau, captions, hardness),
                                       rel=1e-5)
    both = mask[:, 0] & mask[:, 1]  # one shared mask would drop the texts of pairs without image negatives
    shared = info_nce(image, text, tau, caption_ids(captions), "mean", neg_text, neg_image, both, hardness)
    assert not torch.isclose(shared, got)


def test_negatives_raise_the_loss_and_all_masked_changes_nothing():
    b, n, d = 4, 2, 8
    image, text = _unit(b, d, seed=4), _unit(b, d, seed=5)
    neg = _unit(b, n, d, seed=6)
    plain = info_nce(image, text, 0.05)
    assert info_nce(image, text, 0.05, negative_text=neg, negative_image=neg) > plain
    none = torch.zeros(b, n, dtype=torch.bool)
    torch.testing.assert_close(info_nce(image, text, 0.05, negative_text=neg, negative_image=neg,
                                        negative_mask=none), plain)


def _mined(params, tmp_path, k=2):
    from cafe.stages.mine import mine

    pairs(params)
    model = tmp_path / "miner"
    if not model.is_dir():
        make_adapter(params, seed=1).save_pretrained(model)
    # an untrained model scores every pair about alike, so the margin rule would drop every candidate
    params.mine = MineConfig(data=params.train.data, model=str(model), out=str(tmp_path / "negatives"), k=k,
                             candidates=16, rules=["caption", "image_hash"], cache_dir="", progress=False)
    mine(params)
    params.train.negatives = params.mine.out
    params.train.negatives_per_sample = k
    return params


def _batch(params, lo, hi):
    data = pairs(params)
    return collate([data[i] for i in range(lo, hi)])


def test_training_items_carry_their_mined_negatives(params, tmp_path):
    from cafe.mining.shards import read_negatives

    _mined(params, tmp_path)
    data = pairs(params)
    batch = collate([data[i] for i in range(4)])
    assert batch["negative_mask"].shape == (4, 2, 2) and batch["negative_mask"].all()
    assert len(batch["negative_captions"]) == len(batch["negative_images"]) == 8
    mined = read_negatives(params.train.negatives)
    captions = {data.pairs[i][0].id: data.pairs[i][0].caption for i in range(len(data.pairs))}
    for row, pid in enumerate(batch["ids"]):
        texts = mined[pid][0]
        got = batch["negative_captions"][2 * row:2 * row + len(texts[:2])]
        assert got == [captions[j] for j in texts[:2]]


def test_negatives_of_other_pairs_are_refused(params, tmp_path):
    import json

    from cafe.data.pairs import pairs_dataset

    _mined(params, tmp_path)
    version = tmp_path / "negatives" / "data_version.json"
    data = json.loads(version.read_text())
    version.write_text(json.dumps({**data, "pairs_data_version": "0" * 64}))
    with pytest.raises(ValueError, match="run `cafe mine` on these pairs"):
        pairs_dataset(params)


def _grads(params, batch, chunk, sync=lambda p: None):
    adapter = make_adapter(params, seed=3)
    cfg = params.train.model_copy(update={"grad_cache_chunk": chunk})
    losses = {name: run() for name, run in loss_terms(adapter, batch, cfg).items()}
    sync(list(adapter.model.parameters()))
    return losses, {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}


def test_cached_gradients_with_negatives_equal_uncached(params, tmp_path):
    _mined(params, tmp_path)
    params.train.objective.hardness = 1.0
    batch = _batch(params, 0, 7)
    assert batch["negative_mask"].all()
    batch["negative_mask"][1, :, 1] = False  # a padded slot in both directions
    batch["negative_mask"][2, 0, 0] = False  # and one text slot only
    reference = _grads(params, batch, chunk=0)
    _assert_same(_grads(params, batch, chunk=3), reference)  # chunks 3, 3, 1
    # the negatives matter: without them the contrastive loss differs
    plain = {k: v for k, v in batch.items() if not k.startswith("negative_")}
    assert not torch.isclose(_grads(params, plain, chunk=0)[0]["con"], reference[0]["con"])


def test_shared_prefix_step_packs_with_negatives(params, tmp_path):
    """Mined negatives no longer send the shared-prefix step back to three passes; its cached gradients with
    real mined negatives are the three-pass step's (tests/test_shared_prefix.py compares every family)."""
    from cafe.training.shared_prefix import fallback_reason
    from cafe.training.terms import plain_backward

    _mined(params, tmp_path)
    params.train.objective.hardness, params.train.optim.clip_mode = 1.0, "global"
    assert fallback_reason(make_adapter(params), params.train, plain_backward) is None
    batch = _batch(params, 0, 5)
    reference = _grads(params, batch, chunk=0)  # three-pass
    params.train.step = "shared_prefix"
    _assert_same(_grads(params, batch, chunk=2), reference)


def _worker(rank, port, params, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = _grads(params, _batch(params, 6 * rank, 6 * rank + 6), chunk=4, sync=average_gradients)
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_negatives_are_gathered_across_ranks(params, tmp_path):
    _mined(params, tmp_path)
    out = tmp_path / "rank0.pt"
    spawn(_worker, (free_port(), params, str(out)), nprocs=2)
    two = torch.load(out, weights_only=False)
    one = _grads(params, _batch(params, 0, 12), chunk=0)
    _assert_same(({"con": two[0]["con"]}, two[1]), ({"con": one[0]["con"]}, one[1]))


def test_train_stage_runs_with_negatives_and_the_version_names_them(params, tmp_path):
    from cafe.mining.shards import read_version
    from cafe.registry import Registry
    from cafe.stages.register import register
    from cafe.stages.train import train

    _mined(params, tmp_path)
    params.train.max_steps, params.train.batch_size, params.train.log_every = 2, 8, 1
    model = train(params, base_model=lambda: make_adapter(params), progress=False)
    assert (model / "config.json").is_file()
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss_con"]) for r in rows)
    (tmp_path / "metrics.json").write_text(json.dumps({"i2t_R@1": 0.1}))
    (tmp_path / "gate.json").write_text(json.dumps({"passed": True, "checks": []}))
    params.registry.store = str(tmp_path / "registry")
    record = register(params, model, tmp_path / "metrics.json", tmp_path / "gate.json", with_reference=False,
                      parent="base")
    assert "negatives_version.json" in record["files"]
    pulled = Registry(params.registry.store).pull(params.registry.name, record["version"], tmp_path / "pulled")
    lineage = json.loads((pulled / "negatives_version.json").read_text())
    assert lineage["sha256"] == read_version(params.train.negatives)["sha256"]
    assert lineage["pairs_data_version"] == record["data_version"]
