import math

import pytest
import torch
import torch.nn.functional as F

from cafe.config import ObjectiveConfig
from cafe.objective import caption_ids, combine, info_nce


def eq1_direct(h_v, h_t, tau):
    """Paper Eq. 1 written out term by term (sum of both directions, each averaged over N)."""
    n = len(h_v)
    total = 0.0
    for i in range(n):
        total += math.log(math.exp(h_v[i] @ h_t[i] / tau) / sum(math.exp(h_v[i] @ h_t[j] / tau) for j in range(n)))
        total += math.log(math.exp(h_t[i] @ h_v[i] / tau) / sum(math.exp(h_t[i] @ h_v[j] / tau) for j in range(n)))
    return -total / n


def test_info_nce_equals_eq1_written_out():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    expected = eq1_direct(img, txt, 0.1)
    assert info_nce(img, txt, 0.1, directions="sum").item() == pytest.approx(float(expected), rel=1e-9)
    assert info_nce(img, txt, 0.1, directions="mean").item() == pytest.approx(float(expected) / 2, rel=1e-9)


def test_known_values_perfect_and_uniform():
    eye = torch.eye(4, dtype=torch.float64)
    # orthogonal, perfectly matched embeddings at tau=1: each row softmax is e/(e+3)
    assert info_nce(eye, eye, 1.0, directions="mean").item() == pytest.approx(-math.log(math.e / (math.e + 3)))
    same = torch.ones(4, 3, dtype=torch.float64) / math.sqrt(3)
    assert info_nce(same, same, 0.05, directions="mean").item() == pytest.approx(math.log(4))


def test_identical_captions_are_not_negatives():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=-1)
    ids = caption_ids(["a red circle.", "a blue square.", "A  red circle.", "a green cross."])
    assert ids[0] == ids[2] and ids[0] != ids[1]
    masked = info_nce(img, txt, 0.1, ids)
    # written out: row i's denominator skips j where caption j == caption i (j != i)
    logits = img @ txt.T / 0.1
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[0, 2] = keep[2, 0] = False
    i2t = -torch.stack([logits[i, i] - torch.logsumexp(logits[i][keep[i]], 0) for i in range(4)]).mean()
    t2i = -torch.stack([logits[i, i] - torch.logsumexp(logits[:, i][keep[:, i]], 0) for i in range(4)]).mean()
    assert masked.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-9)
    assert masked.item() != pytest.approx(info_nce(img, txt, 0.1).item())


def test_combine_weights_and_baselines():
    losses = {"lm": torch.tensor(2.0), "con": torch.tensor(3.0)}
    out = combine(losses, ObjectiveConfig(alpha_lm=1.0, alpha_con=10.0))
    assert out["lm"].item() == 2.0 and out["con"].item() == 30.0
    assert combine({"lm": torch.tensor(2.0)}, ObjectiveConfig(alpha_con=0.0)) == {"lm": torch.tensor(2.0)}
