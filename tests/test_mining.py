"""`cafe mine`: the chunked search equals brute force, the false-negative rules drop what they should, and the
stage on a tiny world writes versioned hard-negative shards."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from cafe.config import MineConfig
from cafe.data.shards import read_data_version
from cafe.mining.rules import KEEP, NOT_FOUND, ORDER, PairKeys, count, hamming, reasons, select
from cafe.mining.search import exact_topk, faiss_available, recall, search
from cafe.mining.shards import read_negatives, read_version
from tests.conftest import make_adapter, pairs


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
def test_chunked_search_equals_brute_force(chunk):
    queries, keys = _unit(43, 16, 0), _unit(50, 16, 1)
    scores, indices = exact_topk(queries, keys, 6, chunk=chunk)
    full = (queries @ keys.T).topk(6, dim=1)
    assert torch.equal(indices, full.indices)
    assert torch.allclose(scores, full.values, atol=1e-6)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


def test_k_above_the_number_of_keys_returns_every_key():
    scores, indices = exact_topk(_unit(5, 8, 2), _unit(3, 8, 3), 10, chunk=2)
    assert indices.shape == (5, 3)
    assert sorted(indices[0].tolist()) == [0, 1, 2]


needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (pip install 'cafe[mining]')")


def _clustered(n: int, d: int, latent: int, seed: int) -> torch.Tensor:
    # embeddings with structure, as a model's are: a low-dimensional latent mapped into d dimensions
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, latent, generator=g) @ torch.randn(latent, d, generator=g)
                       + 0.1 * torch.randn(n, d, generator=g), dim=1)


@needs_faiss
@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_recall_is_measured_against_exact_and_holds_for_all_queries(index):
    keys = _clustered(3000, 32, 6, 4)
    queries = F.normalize(keys + 0.05 * torch.randn(keys.shape, generator=torch.Generator().manual_seed(5)), dim=1)
    cfg = MineConfig(index=index, recall_target=0.9, recall_sample=200, ef_search=8, nprobe=1, progress=False)
    _, indices, info = search(queries, keys, 10, cfg)
    assert info["index"] == index and info["recall_queries"] == 200 and info["target_met"]
    assert info["recall"] >= 0.9
    # the sample's recall speaks for every query: measured on all of them, it is within a few points
    _, truth = exact_topk(queries, keys, 10)
    assert recall(indices, truth) >= info["recall"] - 0.05


@needs_faiss
def test_search_widens_until_the_recall_target_and_not_without_one():
    keys = queries = _unit(2000, 32, 6)  # random: the hardest case for an approximate index
    cfg = dict(index="ivf", nlist=16, nprobe=1, recall_sample=100, progress=False)
    _, _, narrow = search(queries, keys, 10, MineConfig(**cfg, recall_target=0))
    assert [t["breadth"] for t in narrow["tried"]] == [1] and narrow["recall"] < 0.9
    _, _, wide = search(queries, keys, 10, MineConfig(**cfg, recall_target=1.0))
    # nprobe 1, 2, 4, 8, 16 lists: probing all 16 lists is exact search
    assert [t["breadth"] for t in wide["tried"]] == [1, 2, 4, 8, 16]
    assert wide["recall"] == 1.0 and wide["breadth"] == 16 and wide["target_met"]


@needs_faiss
def test_a_recall_target_out_of_reach_is_reported_not_hidden(monkeypatch, caplog):
    from cafe.mining import search as search_module

    monkeypatch.setattr(search_module, "MAX_BREADTH", 16)
    keys = queries = _unit(3000, 64, 7)
    cfg = MineConfig(index="hnsw", hnsw_m=4, ef_search=4, recall_target=1.0, recall_sample=100, progress=False)
    _, _, info = search(queries, keys, 32, cfg, desc="mine: search i2t")
    assert not info["target_met"] and info["breadth"] == 16 and info["recall"] < 1.0
    assert "below mine.recall_target" in caplog.text and "mine: search i2t" in caplog.text


def test_an_index_the_config_does_not_know_is_refused():
    from cafe.config import ConfigError, load_params

    with pytest.raises(ConfigError, match=r"mine\.index: must be one of 'auto', 'exact', 'hnsw' or 'ivf' "
                                          r"\(got 'faiss'\)"):
        load_params("params.yaml", ["mine.index=faiss"])


def test_hamming_counts_bits():
    a = np.array([0, 0b1011, 2**64 - 1], dtype=np.uint64)
    assert hamming(a, np.array([0, 0, 0], dtype=np.uint64)).tolist() == [0, 3, 64]


def _keys() -> PairKeys:
    # pair 1 repeats pair 0's caption (other case and spacing), pair 2 its image bytes, pair 3 is a
    # near-duplicate image (2 bits of pHash apart), pair 4 and 5 are unrelated
    captions = ["A red circle", "a  red CIRCLE", "a blue square", "a green cross", "a white diamond", "a black cross"]
    shas = ["s0", "s1", "s0", "s3", "s4", "s5"]
    phash = [0b1111 << 40, 1 << 60, 1 << 61, (0b1111 << 40) ^ 0b11, 0xFFFF, 0xFF00FF]
    return PairKeys.build(captions, shas, phash)


def test_each_rule_drops_its_false_negative():
    keys = _keys()
    candidates = np.array([[0, 1, 2, 3, 4, 5]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.88, 0.5]], dtype=np.float32)
    positive = np.array([0.9], dtype=np.float32)
    why = reasons(np.array([0]), candidates, scores, positive, keys,
                  ["caption", "image_hash", "near_duplicate", "margin"], margin=0.05, distance=2, rank_range=None)
    named = [ORDER[c] if c != KEEP else "keep" for c in why[0]]
    # 4 scores 0.88 > 0.9 - 0.05: too close to the positive; only 5 survives
    assert named == ["self", "caption", "image_hash", "near_duplicate", "margin", "keep"]


def test_rules_off_keep_everything_but_the_positive():
    keys = _keys()
    candidates = np.array([[0, 1, 2, 3, 4, 5]])
    scores = np.full((1, 6), 0.5, dtype=np.float32)
    why = reasons(np.array([0]), candidates, scores, np.array([0.9], dtype=np.float32), keys, [], 0.05, 2, None)
    assert why[0, 0] == ORDER.index("self") and (why[0, 1:] == KEEP).all()


def test_slots_an_approximate_index_left_empty_are_never_negatives_nor_compared():
    keys = _keys()
    # faiss pads a short result with index -1 (score -3.4e38); -1 must not wrap to the last pair (5, whose
    # caption a rule could match) nor be kept
    candidates = np.array([[4, -1, 5, -1]])
    scores = np.array([[0.5, -3.4e38, 0.4, -3.4e38]], dtype=np.float32)
    why = reasons(np.array([5]), candidates, scores, np.array([0.9], dtype=np.float32), keys, ["caption", "margin"],
                  0.05, 2, None)
    assert why[0].tolist() == [KEEP, NOT_FOUND, ORDER.index("self"), NOT_FOUND]
    picked, _ = select(candidates, scores, why, 3, False, np.random.default_rng(0))
    assert picked[0].tolist() == [4, -1, -1]
    counts = count(why, picked)
    assert counts["not_found"] == 2 and counts["kept"] == 1 and counts["unused"] == 0


def test_near_duplicate_distance_is_a_threshold():
    keys = _keys()
    candidates, scores = np.array([[3]]), np.array([[0.1]], dtype=np.float32)
    positive = np.array([0.9], dtype=np.float32)
    assert reasons(np.array([0]), candidates, scores, positive, keys, ["near_duplicate"], 0, 1, None)[0, 0] == KEEP
    assert reasons(np.array([0]), candidates, scores, positive, keys, ["near_duplicate"], 0, 2, None)[0, 0] == \
        ORDER.index("near_duplicate")


def test_rank_range_samples_inside_the_window_reproducibly():
    keys = PairKeys.build([f"c{i}" for i in range(30)], [f"s{i}" for i in range(30)])
    candidates = np.arange(1, 21)[None, :]
    scores = np.linspace(0.8, 0.1, 20, dtype=np.float32)[None, :]
    positive = np.array([0.9], dtype=np.float32)
    why = reasons(np.array([0]), candidates, scores, positive, keys, ["margin"], 0.05, 2, (5, 15))
    assert ((why[0] == KEEP) == ((np.arange(20) >= 5) & (np.arange(20) < 15))).all()
    first = select(candidates, scores, why, 4, True, np.random.default_rng(0))
    again = select(candidates, scores, why, 4, True, np.random.default_rng(0))
    assert np.array_equal(first[0], again[0])
    assert set(first[0][0].tolist()) <= set(range(6, 16))
    hardest = select(candidates, scores, why, 4, False, np.random.default_rng(0))[0][0]
    assert hardest.tolist() == [6, 7, 8, 9]
    counts = count(why, first[0])
    assert counts["rank_range"] == 10 and counts["kept"] == 4 and counts["unused"] == 6


def test_select_pads_short_rows():
    candidates = np.array([[1, 2, 3]])
    why = np.array([[KEEP, 0, 0]], dtype=np.int8)
    idx, sc = select(candidates, np.array([[0.5, 0.4, 0.3]], dtype=np.float32), why, 2, False,
                     np.random.default_rng(0))
    assert idx.tolist() == [[1, -1]] and np.isnan(sc[0, 1])


def test_mine_stage_writes_versioned_shards(params, tmp_path):
    from cafe.stages.mine import mine

    pairs(params)  # repurposes the tiny world
    model = tmp_path / "model"
    make_adapter(params).save_pretrained(model)
    params.mine = MineConfig(data=params.train.data, model=str(model), out=str(tmp_path / "negatives"), k=3,
                             candidates=20, cache_dir=str(tmp_path / "cache"), progress=False)
    summary = mine(params)
    out = tmp_path / "negatives"
    version = read_version(out)
    assert version["pairs_data_version"] == read_data_version(params.train.data)
    assert version["model"]["path"] == str(model) and len(version["model"]["digest"]) == 16
    assert version["sha256"] == json.loads((out / "summary.json").read_text())["data_version"]
    table = pq.read_table(out / "train").to_pydict()
    ids = pq.read_table(f"{params.train.data}/train", columns=["id", "long_caption", "image_sha256"]).to_pydict()
    caption = dict(zip(ids["id"], (" ".join(c.lower().split()) for c in ids["long_caption"])))
    assert table["id"] == ids["id"]
    n = len(ids["id"])
    for direction, column in (("i2t", "text_negatives"), ("t2i", "image_negatives")):
        counts = summary["directions"][direction]
        assert sum(v for k, v in counts.items() if k not in ("negative", "pairs_short")) == n * 20
        assert counts["self"] <= n  # its own pair, when among its 20 neighbours
        for pid, negs in zip(table["id"], table[column]):
            assert len(negs) <= 3 and pid not in negs
            assert all(caption[j] != caption[pid] for j in negs)
        assert counts["kept"] == sum(len(v) for v in table[column])
    assert read_negatives(out)[table["id"][0]] == (table["text_negatives"][0], table["image_negatives"][0])
    # a second run reads its embeddings from the cache and writes the same version
    again = mine(params)
    assert again["embedding_cache"]["misses"] == 0
    assert read_version(out)["sha256"] == version["sha256"]
