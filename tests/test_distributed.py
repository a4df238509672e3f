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
