"""Gather-with-gradient over two gloo processes gives the loss and gradients of one process on the full batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cafe.distributed import average_gradients, gather, gather_with_grad
from cafe.objective import caption_ids, info_nce
from tests.multiproc import free_port, spawn


def _model():
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"img": torch.nn.Linear(6, 4), "txt": torch.nn.Linear(5, 4)}).double()


def _data():
    g = torch.Generator().manual_seed(1)
    captions = ["a", "b", "a", "c", "d", "e", "f", "b"]  # duplicates within and across ranks
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64), captions


def _loss(model, x_img, x_txt, captions):
    img = gather_with_grad(F.normalize(model["img"](x_img), dim=-1))
    txt = gather_with_grad(F.normalize(model["txt"](x_txt), dim=-1))
    return info_nce(img, txt, 0.1, gather(caption_ids(captions)))


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = _model()
    x_img, x_txt, captions = _data()
    rows = slice(4 * rank, 4 * rank + 4)
    loss = _loss(model, x_img[rows], x_txt[rows], captions[rows])
    loss.backward()
    params = list(model.parameters())
    average_gradients(params)
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": [p.grad for p in params]}, out)
    dist.destroy_process_group()


def test_two_process_gather_with_grad_matches_full_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    spawn(_worker, (free_port(), str(out)), nprocs=2)
    got = torch.load(out)

    model = _model()
    x_img, x_txt, captions = _data()
    loss = _loss(model, x_img, x_txt, captions)
    loss.backward()
    assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-12)
    for g, p in zip(got["grads"], model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)



def _lm_grads(params, batch, step, chunk):
    """The step's losses and the (hand-averaged across ranks) gradients of one ``loss_terms`` run."""
    from cafe.training.step import loss_terms
    from tests.conftest import make_adapter

    adapter = make_adapter(params, seed=3)
    cfg = params.train.model_copy(update={"grad_cache_chunk": chunk, "step": step})
    losses = {name: float(run()) for name, run in loss_terms(adapter, batch, cfg).items()}
    average_gradients(list(adapter.model.parameters()))
    return losses, {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}


def _lm_samples(params, rows: slice) -> dict:
    """Rows of the first 8 training pairs, collated (their answers have several lengths)."""
    from cafe.data.samples import collate
    from tests.conftest import pairs

    data = pairs(params)
    return collate([data[i] for i in range(8)][rows])


# (step, lm_average, alpha_con, grad_cache_chunk, samples on rank 0): rank 1 has the other 8 - n. The language
# loss alone runs on batches of unequal size; with L_con on (the shared-prefix step needs both) the ranks'
# batches are equal, as GlobalBatchSampler makes them, and only the answers' lengths differ
LM_CASES = [("three_pass", "sample", 0.0, 0, 3), ("three_pass", "sample", 0.0, 2, 3),
            ("three_pass", "sample", 0.0, 0, 7), ("three_pass", "token", 0.0, 2, 3),
            ("three_pass", "sample", 1.0, 2, 4), ("shared_prefix", "sample", 1.0, 0, 4),
            ("shared_prefix", "sample", 1.0, 2, 4)]


def _lm_worker(rank, port, params, out):
    from cafe.training import step as step_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {}
    for case in LM_CASES:
        step, average, alpha_con, chunk, first = case
        params.train.objective.lm_average, params.train.objective.alpha_con = average, alpha_con
        losses, grads = _lm_grads(params, _lm_samples(params, slice(0, first) if rank == 0 else slice(first, 8)),
                                  step, chunk)
        gathered = [None, None]
        dist.all_gather_object(gathered, losses)
        result[case] = gathered, grads
    # negative control: per-rank means (the count not gathered) give other gradients on unequal batches
    params.train.objective.lm_average, params.train.objective.alpha_con = "sample", 0.0
    gather_counts = step_module.gather
    step_module.gather = lambda t: t
    try:
        result["per-rank"] = _lm_grads(params, _lm_samples(params, slice(0, 3) if rank == 0 else slice(3, 8)),
                                       "three_pass", 0)[1]
    finally:
        step_module.gather = gather_counts
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_language_loss_averages_over_the_global_batch_on_two_ranks(params, tmp_path):
    """``lm_average: sample`` (and ``token``) over 2 ranks with unequal samples and answer lengths: the
    gradients are the one-process gradients on all 8 samples and the ranks' language losses average to its
    loss (the global count of samples, not each rank's mean); L_con is the same on every rank."""
    from tests.conftest import pairs
    from tests.test_grad_cache import _assert_same

    pairs(params)  # repurposed once, in the parent
    params.train.optim.clip_mode = "global"  # one backward: the shared-prefix step packs under caching too
    lengths = {len(s) for s in _lm_samples(params, slice(0, 8))["answers"]}
    assert len(lengths) > 2, "the first pairs should have answers of several lengths"
    out = tmp_path / "rank0.pt"
    spawn(_lm_worker, (free_port(), params, str(out)), nprocs=2, timeout=900)
    got = torch.load(out, weights_only=False)
    full = _lm_samples(params, slice(0, 8))
    for case in LM_CASES:
        step, average, alpha_con, chunk, _ = case
        params.train.objective.lm_average, params.train.objective.alpha_con = average, alpha_con
        losses, grads = _lm_grads(params, full, step, 0)
        (rank0, rank1), two = got[case]
        assert (rank0["lm"] + rank1["lm"]) / 2 == pytest.approx(losses["lm"], rel=1e-5), case
        if alpha_con:
            assert rank0["con"] == pytest.approx(losses["con"], rel=1e-5) == rank1["con"], case
        _assert_same(({}, two), ({}, grads))
        if case == LM_CASES[0]:
            reference = grads
    error = max(float((got["per-rank"][k] - reference[k]).abs().max() / reference[k].abs().max())
                for k in reference if reference[k].abs().max() > 0)
    assert error > 1e-2, error  # the test can tell per-rank means from the global count
