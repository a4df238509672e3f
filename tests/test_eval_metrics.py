"""Hand-computed values for every metric of the evaluation suite."""

import json

import numpy as np
import pytest
import torch

from cafe.evaluation import mmstar, pope, sugarcrepe, throne
from cafe.evaluation.per_item import PerItem, effective_rank, explained_variance, geometry_metrics
from cafe.evaluation.retrieval import recall_from_ranks, retrieval_ranks


def test_ranks_are_per_item_and_give_recall():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.0, 1.0]])
    i2t, t2i = retrieval_ranks(img, txt, [0, 0, 1, 1], chunk=1)
    assert i2t.tolist() == [0, 0]
    # caption 1 prefers image 1 (0.8 > 0.2); caption 2 prefers image 0 (0.6 > 0.4)
    assert t2i.tolist() == [0, 1, 1, 0]
    assert recall_from_ranks(i2t, t2i, [1, 2]) == {"i2t_R@1": 1.0, "t2i_R@1": 0.5, "i2t_R@2": 1.0, "t2i_R@2": 1.0}


def test_pope_all_yes_answerer_per_split_and_average():
    qs = [pope.PopeQuestion(i, "x.png", "Is there a cat?", label, split)
          for i, (label, split) in enumerate([("yes", "random"), ("no", "random"), ("yes", "popular"), ("no", "popular"),
                                              ("yes", "adversarial"), ("no", "adversarial")])]
    arrays, meta = pope.pope_arrays(qs, ["Yes, there is."] * 6)
    m = PerItem().add("pope", meta, **arrays)
    for split in ("random", "popular", "adversarial", "avg"):
        assert m[f"pope_{split}_f1"] == pytest.approx(2 / 3)
        assert m[f"pope_{split}_yes_ratio"] == 1.0
        assert m[f"pope_{split}_accuracy"] == 0.5 and m[f"pope_{split}_precision"] == 0.5
        assert m[f"pope_{split}_recall"] == 1.0
    assert m["probe_f1"] == pytest.approx(2 / 3) and m["probe_yes_ratio"] == 1.0


def test_pope_answer_parsing_and_mixed_split():
    assert pope.parse_answer("No, there is not.") == "no"
    assert pope.parse_answer("Yes. There is no dog.") == "yes"  # only the first sentence counts
    assert pope.parse_answer("I do not see one") == "no"
    assert pope.parse_answer("Nope") == "yes"  # POPE matches whole words only
    qs = [pope.PopeQuestion(i, "x.png", "q", l, "random") for i, l in enumerate(["yes", "yes", "no", "no"])]
    arrays, meta = pope.pope_arrays(qs, ["yes", "no", "yes", "no"])  # tp 1, fn 1, fp 1, tn 1
    m = PerItem().add("pope", meta, **arrays)
    assert m["pope_random_precision"] == 0.5 and m["pope_random_recall"] == 0.5 and m["pope_random_f1"] == 0.5
    assert m["pope_random_yes_ratio"] == 0.5


# replies where POPE's evaluate.py (RUCAIBox/POPE) and a lower-casing, any-whitespace parser disagree:
# POPE is case-sensitive, removes commas without a space and splits on single spaces only
POPE_DIFFERS = [
    ("NO", "yes"), ("NOT at all", "yes"), ("Not really", "yes"), ("No\nthere is none", "yes"),
    ("no\tway", "yes"), ("Yes,no", "yes"), ("it is not,a cat", "yes"), ("there is NO cat", "yes"),
]


@pytest.mark.parametrize(("reply", "official"), POPE_DIFFERS)
def test_pope_parsing_is_popes_own_where_a_looser_parser_differs(reply, official):
    looser = "no" if {"no", "not"} & set(reply.split(".")[0].replace(",", " ").lower().split()) else "yes"
    assert looser != official  # each case is one where the rules part
    assert pope.parse_answer(reply) == official


def test_pope_reply_kinds_yes_no_other():
    kinds = {"Yes": "yes", "yes, there is": "yes", "No": "no", "There is not a cat. Yes": "no",
             "Yes. There is no dog.": "yes", "a large red circle": "other", "": "other", "Nope": "other",
             "YES": "other", "no.": "no", "I do not know": "no", "Yes no": "no"}
    assert {reply: pope.answer_kind(reply) for reply in kinds} == kinds
    assert all(pope.parse_answer(r) == ("no" if k == "no" else "yes") for r, k in kinds.items())  # other -> yes


def test_pope_invalid_rate_counts_replies_without_yes_or_no():
    qs = [pope.PopeQuestion(i, "x.png", "q", l, s) for i, (l, s) in
          enumerate([("yes", "random"), ("no", "random"), ("yes", "popular"), ("no", "popular")])]
    arrays, meta = pope.pope_arrays(qs, ["Yes", "a small red", "no", "blue cross and"])
    m = PerItem().add("pope", meta, **arrays)
    assert m["pope_invalid_rate"] == 0.5 and m["pope_random_invalid_rate"] == 0.5
    assert m["probe_yes_ratio"] == 0.75  # POPE's own reading: the fragments are "yes"
    legacy = {k: v for k, v in arrays.items() if k != "valid"}  # evaluations written before the rate
    assert "pope_invalid_rate" not in PerItem().add("pope", meta, **legacy)


def test_pope_file_errors_name_the_line(tmp_path):
    path = tmp_path / "coco_pope_random.json"
    path.write_text(json.dumps({"question_id": 1, "image": "a.png", "text": "q", "label": "yes"}) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"coco_pope_random.json:2"):
        pope.read_pope_file(path, "random")


def test_throne_overall_and_classwise_with_synonyms():
    vocab = throne.Vocabulary({"red circle": ["red disc"], "blue square": ["blue box"], "green cross": []})
    texts = ["A red disc and a green cross.", "A green cross and a blue box."]
    objects = [["red circle", "blue square"], ["green cross"]]
    arrays, meta = throne.throne_arrays(texts, objects, vocab)
    m = PerItem().add("throne", meta, **arrays)
    # tp: red circle (1), green cross (2); fp: green cross (1), blue square (2); fn: blue square (1)
    assert m["throne_precision"] == pytest.approx(2 / 4)
    assert m["throne_recall"] == pytest.approx(2 / 3)
    assert m["throne_f1"] == pytest.approx(4 / 7)
    assert m["throne_f0.5"] == pytest.approx(10 / 19)
    # class-wise: red circle P=R=1; blue square P=R=0; green cross P=1/2, R=1
    assert m["throne_cls_precision"] == pytest.approx(0.5)
    assert m["throne_cls_recall"] == pytest.approx(2 / 3)
    assert m["throne_cls_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["throne_cls_f0.5"] == pytest.approx((1 + 0 + 5 / 9) / 3)


def test_throne_matches_whole_words_only():
    vocab = throne.Vocabulary({"red circle": ["red disc"]})
    assert vocab.find("a red discus") == set() and vocab.find("Red  disc!") == {0}
    with pytest.raises(ValueError, match="not a class"):
        throne.throne_arrays(["x"], [["blue square"]], vocab)


def test_sugarcrepe_ties_are_wrong_and_categories_average():
    items = [sugarcrepe.SugarCrepeItem(s, "a.png", "p", "n") for s in ("replace_att", "replace_obj", "swap_att", "add_obj")]
    img = torch.tensor([[1.0, 0.0]] * 4)
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, -0.8], [1.0, 0.0]])  # right, wrong, tie, tie
    arrays, meta = sugarcrepe.sugarcrepe_arrays(items, img, pos, neg)
    m = PerItem().add("sugarcrepe", meta, **arrays)
    assert arrays["correct"].tolist() == [1, 0, 0, 0]
    assert m["sugarcrepe_replace_accuracy"] == 0.5 and m["sugarcrepe_swap_accuracy"] == 0.0
    assert m["sugarcrepe_add_accuracy"] == 0.0
    assert m["sugarcrepe_accuracy"] == pytest.approx(0.5 / 3)


def test_sugarcrepe_file_format(tmp_path):
    (tmp_path / "swap_att.json").write_text(json.dumps({"0": {"filename": "a.jpg", "caption": "c", "negative_caption": "n"}}))
    assert sugarcrepe.load_sugarcrepe(tmp_path) == [sugarcrepe.SugarCrepeItem("swap_att", "a.jpg", "c", "n")]
    (tmp_path / "add_obj.json").write_text(json.dumps({"7": {"filename": "a.jpg", "caption": "c"}}))
    with pytest.raises(ValueError, match="'7' lacks"):
        sugarcrepe.load_sugarcrepe(tmp_path)


def test_mmstar_choice_parsing_and_accuracy():
    q = "How many objects are in the image?\nOptions: A: one, B: two, C: three, D: four"
    opts = mmstar.options(q)
    assert opts == {"A": "one", "B": "two", "C": "three", "D": "four"}
    assert mmstar.parse_choice("B", opts) == "B" and mmstar.parse_choice("(C).", opts) == "C"
    assert mmstar.parse_choice("two", opts) == "B"  # the option's text when no letter is given
    assert mmstar.parse_choice("A or B", opts) is None and mmstar.parse_choice("", opts) is None
    qs = [mmstar.ChoiceQuestion(i, q, "B", cat, "x.png") for i, cat in enumerate(["counting", "counting", "colour"])]
    arrays, meta = mmstar.mmstar_arrays(qs, ["B", "D", "B"])
    m = PerItem().add("mmstar", meta, **arrays)
    assert m["mmstar_accuracy"] == pytest.approx(2 / 3)
    assert m["mmstar_counting_accuracy"] == 0.5 and m["mmstar_colour_accuracy"] == 1.0


def test_mmstar_rejects_an_answer_that_is_not_an_option(tmp_path):
    path = tmp_path / "mmstar.jsonl"
    path.write_text(json.dumps({"index": 0, "question": "Q?\nOptions: A: x, B: y", "answer": "C", "image": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="mmstar.jsonl:1"):
        mmstar.load_mmstar(path)


def test_geometry_effective_rank_explained_variance_and_gap():
    x = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])  # two equal singular values
    assert effective_rank(x) == pytest.approx(2.0)
    assert explained_variance(x)[:2] == pytest.approx([0.5, 1.0])
    y = np.array([[2.0, 0, 0], [-2, 0, 0], [0, 1, 0], [0, -1, 0]])  # singular values 2*sqrt2, sqrt2
    p = np.array([2 / 3, 1 / 3])
    assert effective_rank(y) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert explained_variance(y)[0] == pytest.approx(0.8)
    m = geometry_metrics({"image_emb": x + [0, 0, 1], "text_emb": x}, {"cev_k": 1})
    assert m["modality_gap"] == pytest.approx(1.0) and m["image_cev@1"] == pytest.approx(0.5)


def test_per_item_round_trip(tmp_path):
    items = PerItem()
    items.add("captions", tp=[1, 2], n_pred=[2, 2], n_true=[1, 3])
    items.add("mmstar", {"categories": ["a"]}, correct=[1, 0, 1], category=[0, 0, 0])
    items.save(tmp_path / "per_item.npz")
    back = PerItem.load(tmp_path / "per_item.npz")
    assert back.metrics() == items.metrics()
    assert back.metrics()["object_precision"] == 0.75 and back.metrics()["object_recall"] == 0.75
