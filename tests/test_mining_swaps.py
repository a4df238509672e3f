"""Attribute-swap negatives (mine.source: attribute_swaps): each variant changes only the attribute it names,
none that is kept describes its image (the shapes world's ground truth), the shards load in training, and no
caption makes the rules raise or lose a variant."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cafe.cli import app
from cafe.data import shapes
from cafe.data.shards import read_data_version
from cafe.mining.run import merge
from cafe.mining.shards import read_swap_captions, read_version
from cafe.mining.swaps import ATTRIBUTES, DROPS, VALUES, fits, judge, normalise, parse, swap_negatives, variants
from tests.conftest import pairs


def _scenes(n: int, seed: int = 0) -> list[shapes.Scene]:
    rng = random.Random(seed)
    return [shapes.sample_scene(rng, f"s{i}", [1, 1, 1]) for i in range(n)]


def _captions(scene: shapes.Scene) -> list[str]:
    """Every caption the world writes for a scene: the five phrasings and the detailed description."""
    return [*shapes.phrasings(scene), shapes.detailed_description(scene)]


def _fitting(scene: shapes.Scene) -> set[str]:
    """Every caption the world could write that is true of the scene: its captions for each listing order."""
    return {normalise(c) for order in itertools.permutations(scene.objects)
            for c in _captions(shapes.Scene(scene.id, list(order), scene.background))}


def _attributes(text: str) -> tuple[list[dict], int | None]:
    parsed = parse(text)
    return [{a: o.get(a) for a in ATTRIBUTES} for o in parsed.objects], parsed.count and parsed.count[0]


def test_a_swapped_caption_differs_in_exactly_the_attribute_named():
    seen = set()
    for scene in _scenes(60):
        for caption in _captions(scene):
            before, count = _attributes(caption)
            assert len(before) == len(scene.objects)  # the parser reads every object the world writes
            for kind, text in variants(caption):
                op, attr = kind.split("_", 1)
                seen.add(kind)
                after, new_count = _attributes(text)
                assert len(after) == len(before), (caption, text)
                changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
                for i in changed:  # only the named attribute moved
                    assert {k for k in ATTRIBUTES if before[i][k] != after[i][k]} == {attr}, (caption, text)
                if attr == "count":
                    assert not changed and new_count != count
                    continue
                assert new_count == count
                if op == "replace":
                    assert len(changed) == 1 and after[changed[0]][attr] in VALUES[attr]
                else:
                    assert len(changed) in (0, 2), (caption, text)  # 0: the two values were equal
                    if changed:
                        i, j = changed
                        assert (after[i][attr], after[j][attr]) == (before[j][attr], before[i][attr])
                # only attribute words (and an article or verb agreeing with them) changed
                assert len(text.split()) == len(caption.split()) or attr == "position"
    assert seen == {f"replace_{a}" for a in (*ATTRIBUTES, "count")} | {f"swap_{a}" for a in ATTRIBUTES}


def test_kept_swaps_of_a_generated_world_never_equal_a_caption_that_fits_the_image():
    caught = kept = 0
    for scene in _scenes(150, seed=3):
        fitting = _fitting(scene)
        for caption in _captions(scene):
            judged = judge(caption)
            made = variants(caption)
            caught += sum(normalise(t) in fitting and normalise(t) != normalise(caption) for _, t in made)
            assert not {normalise(t) for _, t in judged.kept} & fitting, caption
            kept += len(judged.kept)
            assert len(judged.kept) + sum(judged.dropped.values()) == len(made)
    # the rule had work to do: swapping the colours of two circles gives back the same scene
    assert caught > 0 and kept > 0


def test_fits_reads_positions_and_counts_only_where_stated():
    truth = parse("a small red circle at the top and a large blue square in the center.")
    assert fits(parse("a large blue square and a small red circle."), truth)
    assert not fits(parse("a small blue circle and a large red square."), truth)
    assert not fits(parse("a small red circle in the center and a large blue square at the top."), truth)
    assert fits(parse("There are two objects on a grey background."), truth)
    assert not fits(parse("There are three objects on a grey background."), truth)


def test_articles_and_verbs_agree_after_an_edit():
    texts = {t for _, t in variants("There is one object on a grey background. A small red circle is in the center.")}
    assert "There is one object on a grey background. A small orange circle is in the center." in texts
    assert "There are two objects on a grey background. A small red circle is in the center." in texts
    texts = {t for _, t in variants("an orange cross that is small.")}
    assert "a red cross that is small." in texts


def test_image_negatives_are_pairs_whose_caption_is_a_swap():
    captions = ["a small red circle.", "a small blue circle.", "a small red circle.", "a dog.", "a large red circle."]
    shas = ["a", "b", "c", "d", "a"]
    out = swap_negatives(captions, shas, k=3)
    # pair 0: the blue circle (1) is a colour swap; the large red circle (4) shares its image bytes
    assert out["pairs"][0].tolist() == [1, -1, -1]
    assert out["pairs"][3].tolist() == [-1, -1, -1] and out["captions"][3] == []
    assert all(len(c) == 3 for i, c in enumerate(out["captions"]) if i != 3)
    s = out["summary"]
    assert s["variants"] == s["kept"] + sum(s["dropped"].values()) and s["pairs_without_variant"] == 1


def test_merge_puts_the_first_source_first_without_repeats():
    first = (np.array([[3, -1], [-1, -1]]), np.full((2, 2), np.nan, np.float32))
    second = (np.array([[3, 5], [7, 8]]), np.array([[0.9, 0.8], [0.7, 0.6]], np.float32))
    idx, scores = merge(first, second, 2)
    assert idx.tolist() == [[3, 5], [7, 8]] and np.isnan(scores[0, 0]) and scores[0, 1] == pytest.approx(0.8)


_WORDS = [*shapes.COLOURS, *shapes.SHAPES, *shapes.SIZES, "top", "left", "right", "bottom", "center", "at", "the",
          "in", "is", "are", "a", "an", "one", "two", "three", "object", "objects", "that", "and", ",", ".", ":",
          "There", "A", "RED", "Circle", "dog"]
_caption = st.one_of(
    st.lists(st.sampled_from(_WORDS), max_size=30).map(" ".join),
    st.text(max_size=80),
    st.builds(lambda seed, i: _captions(_scenes(1, seed)[0])[i], st.integers(0, 10_000), st.integers(0, 5)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(caption=_caption, others=st.lists(_caption, max_size=4))
def test_no_caption_raises_and_every_variant_is_kept_valid_or_counted_dropped(caption, others):
    judged = judge(caption, frozenset(normalise(o) for o in others))
    made = variants(caption)
    assert len(judged.kept) + sum(judged.dropped.values()) == len(made)
    truth = parse(caption)
    for kind, text in judged.kept:
        assert normalise(text) != normalise(caption)
        if judged.truth:
            assert not fits(parse(text), truth)
        else:
            assert normalise(text) not in {normalise(o) for o in others}
    out = swap_negatives([caption, *others], ["x"] * (1 + len(others)), k=2)
    s = out["summary"]
    assert s["variants"] == s["kept"] + sum(s["dropped"][d] for d in DROPS)
    assert (out["pairs"] < 0).all()  # one image: a pair with the same bytes is never a negative


def test_stage_writes_swap_shards_that_training_loads(params, tmp_path):
    from cafe.data.pairs import WithNegatives, pairs_dataset

    pairs(params)
    params.mine.data, params.mine.out, params.mine.k, params.mine.progress = (
        params.train.data, str(tmp_path / "swaps"), 3, False)
    params_file = tmp_path / "params.yaml"
    import yaml

    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["mine", "-p", str(params_file), "--source", "attribute_swaps",
                                      "-m", str(tmp_path / "no-model-needed")])
    assert result.exit_code == 0, result.output
    assert "dropped: fits_image" in result.output and "false negatives" in result.output
    out = tmp_path / "swaps"
    version = read_version(out)
    assert version["source"] == "attribute_swaps" and version["model"] is None
    assert version["pairs_data_version"] == read_data_version(params.train.data)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_version"] == version["sha256"]
    assert summary["swaps"]["false_negative_rate"]["kept"] > 0
    rows = pq.read_table(f"{params.train.data}/train", columns=["id", "long_caption", "image_sha256"]).to_pydict()
    caption = dict(zip(rows["id"], rows["long_caption"]))
    sha = dict(zip(rows["id"], rows["image_sha256"]))
    swaps = read_swap_captions(out)
    table = pq.read_table(out / "train").to_pydict()
    assert table["id"] == rows["id"] and sum(map(len, table["text_negatives"])) > 0
    for pid, texts, images in zip(table["id"], table["text_negatives"], table["image_negatives"]):
        assert texts == images and len(texts) <= 3
        made = {normalise(t) for _, t in variants(caption[pid])}
        for j in texts:  # a pair whose caption is a swap of this one, with another image
            assert normalise(caption[j]) in made and sha[j] != sha[pid]
        assert 0 < len(swaps[pid]) <= 3 and all(normalise(t) != normalise(caption[pid]) for _, t in swaps[pid])
    params.train.negatives, params.train.negatives_per_sample = str(out), 2
    dataset = pairs_dataset(params)
    assert isinstance(dataset, WithNegatives) and dataset.version == version["sha256"]
    for index, pid in enumerate(table["id"][:40]):  # every swapped caption is a text negative, first
        sample, _ = dataset[index]
        texts, images = sample.negative_mask
        own = [t for _, t in swaps[pid]][:2]
        assert list(sample.negative_captions[:len(own)]) == own and sum(texts) == min(2, len(own) + len(
            {caption[j] for j in table["text_negatives"][index]} - set(own)))
        assert sum(images) == min(2, len(table["image_negatives"][index]))
    assert any(sum(dataset[i][0].negative_mask[0]) > sum(dataset[i][0].negative_mask[1]) for i in range(40))


def test_fits_matches_objects_one_to_one_whatever_the_order():
    # the first mention agrees with both truth objects, the second with only the first: a greedy match fails
    truth = parse("a small red circle and a small red circle at the top.")
    assert fits(parse("a red circle and a small red circle at the top."), truth)
    assert not fits(parse("a red circle at the top and a small red circle at the top."), parse(
        "a small red circle at the top and a small red circle at the left."))
    many = " and ".join(f"a small {c} circle" for c in shapes.COLOURS) + "."
    assert not fits(parse(many.replace("white", "red")), parse(many))  # eight mentions: no blow-up


def test_both_puts_the_swap_pairs_first_then_the_mined_ones(params, tmp_path):
    from cafe.config import MineConfig
    from cafe.mining.run import mine
    from cafe.mining.shards import read_negatives
    from tests.conftest import make_adapter

    pairs(params)
    version = read_data_version(params.train.data)
    common = {"data": params.train.data, "k": 3, "candidates": 12, "rules": [], "cache_dir": "", "progress": False}
    swaps = MineConfig(**common, out=str(tmp_path / "swaps"), source="attribute_swaps")
    both = MineConfig(**common, out=str(tmp_path / "both"), source="both")
    mine(None, swaps, params.train.captions, version, None)
    summary = mine(make_adapter(params), both, params.train.captions, version, {"path": "tiny"})
    assert {"rules", "search", "swaps"} <= set(summary) and read_version(both.out)["source"] == "both"
    by_rule, merged = read_negatives(swaps.out), read_negatives(both.out)
    assert read_swap_captions(both.out) == read_swap_captions(swaps.out)
    for pid, (texts, images) in merged.items():
        for mined, first in ((texts, by_rule[pid][0]), (images, by_rule[pid][1])):
            assert mined[:len(first)] == first and len(set(mined)) == len(mined) <= 3
            assert len(mined) == 3  # with the rules off, 11 neighbours besides the pair itself fill k
