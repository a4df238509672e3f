import pytest
import torch

from cafe.evaluation.generation import object_prf, parse_objects, parse_yes_no, yes_no_scores
from cafe.evaluation.retrieval import modality_gap, recall_at_k


def test_recall_hand_computed():
    # 2 images, 2 captions each (captions 0,1 -> image 0; 2,3 -> image 1)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.0, 1.0]])
    r = recall_at_k(img, txt, [0, 0, 1, 1], ks=[1, 2])
    # image 0 ranks captions 0 (0.9), 2 (0.6), 1 (0.2), 3 -> hit at 1; image 1: 3 (1.0) -> hit
    assert r["i2t_R@1"] == 1.0
    # caption 1 (0.2 vs 0.8) prefers image 1 -> miss at 1, hit at 2; caption 2 (0.6 vs 0.4) prefers image 0 -> miss
    assert r["t2i_R@1"] == 0.5 and r["t2i_R@2"] == 1.0


def test_image_hit_if_any_of_its_five_captions_ranks():
    img = torch.eye(3)
    txt = torch.zeros(15, 3)
    owner = [i // 5 for i in range(15)]
    txt[4] = torch.tensor([1.0, 0, 0])  # only the fifth caption of image 0 matches it
    txt[5:10, 1] = 1.0
    txt[10:15, 2] = 1.0
    txt[0:4] = torch.tensor([0.0, 0.5, 0.5])
    r = recall_at_k(img, txt, owner, ks=[1])
    assert r["i2t_R@1"] == 1.0


def test_ties_count_against_the_query():
    img = torch.ones(4, 2) / 2 ** 0.5
    txt = torch.ones(4, 2) / 2 ** 0.5
    r = recall_at_k(img, txt, [0, 1, 2, 3], ks=[1, 4])
    assert r["i2t_R@1"] == 0.0 and r["t2i_R@1"] == 0.0 and r["i2t_R@4"] == 1.0


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(37, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(185, 8, generator=g), dim=-1)
    owner = [i // 5 for i in range(185)]
    assert recall_at_k(img, txt, owner, chunk=7) == recall_at_k(img, txt, owner, chunk=4096)


def test_modality_gap():
    assert modality_gap(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(2 ** 0.5)


def test_objects_right_or_wrong_one_by_one():
    colours, shapes = ["red", "blue", "white"], ["circle", "cross"]
    assert parse_objects("a large red circle and a small blue cross.", colours, shapes) == {("red", "circle"), ("blue", "cross")}
    assert parse_objects("two objects: a white cross that is small.", colours, shapes) == {("white", "cross")}
    assert parse_objects("a circle", colours, shapes) == set()
    prf = object_prf([{("red", "circle"), ("blue", "cross")}], [{("red", "circle"), ("white", "cross"), ("blue", "circle")}])
    assert prf["precision"] == 0.5 and prf["recall"] == pytest.approx(1 / 3) and prf["f1"] == pytest.approx(0.4)


def test_pope_parsing_and_all_yes_answerer():
    assert parse_yes_no("Yes") == "yes" and parse_yes_no("No, there is not.") == "no"
    assert parse_yes_no("There is not a cat. Yes") == "no"
    scores = yes_no_scores(["Yes"] * 4, ["yes", "no", "yes", "no"])
    assert scores["f1"] == pytest.approx(2 / 3) and scores["yes_ratio"] == 1.0 and scores["accuracy"] == 0.5
