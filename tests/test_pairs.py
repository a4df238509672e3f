"""Training reads the repurposed shards: ShardDataset items, the data version, and the
``train.captions`` switch routing short captions to L_con and long ones to L_lm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cafe.data.pairs import ShardDataset
from cafe.data.samples import GlobalBatchSampler, collate
from cafe.stages.register import resolve_data_version
from cafe.training.step import loss_terms
from tests.conftest import make_adapter, pairs

LONG = "A {} shape on a plain background. It is drawn in one colour and has no shadow."


@pytest.fixture()
def two_caption_params(params, world, tmp_path):
    records = json.loads((world / "train" / "instructions.json").read_text())
    brief = [r for r in records if r["kind"] == "brief"][:16]
    lines = []
    for i, rec in enumerate(brief):
        turns = [rec["conversations"][0], {"from": "gpt", "value": LONG.format(f"number {i}")}]
        lines.append(json.dumps({**rec, "conversations": turns}))
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    params.repurpose.input = str(tmp_path / "records.jsonl")
    params.repurpose.val_fraction = 0.0
    return params


def _routed(params, adapter, captions: str) -> tuple[list[str], list[str]]:
    """The texts the contrastive loss embedded and the answers the language loss was trained on."""
    params.train.captions = captions
    data = pairs(params)
    batch = collate([data[i] for i in range(4)])
    seen = {"con": [], "lm": []}
    text_embed, lm_inputs = adapter.text_embed_inputs, adapter.lm_inputs

    def spy_text(texts):
        seen["con"] += list(texts)
        return text_embed(texts)

    def spy_lm(images, prompts, answers):
        seen["lm"] += list(answers)
        return lm_inputs(images, prompts, answers)

    adapter.text_embed_inputs, adapter.lm_inputs = spy_text, spy_lm
    try:
        for run in loss_terms(adapter, batch, params.train).values():
            run()
    finally:
        adapter.text_embed_inputs, adapter.lm_inputs = text_embed, lm_inputs
    return seen["con"], seen["lm"]


def test_caption_switch_routes_short_to_contrastive_and_long_to_language(two_caption_params):
    adapter = make_adapter(two_caption_params)
    con, lm = _routed(two_caption_params, adapter, "short_long")
    assert len(con) == len(lm) == 4
    assert all(c.endswith("background.") and c.startswith("A ") for c in con)
    assert all(a.endswith("no shadow.") for a in lm)
    assert [c.split(" on ")[0] for c in con] == [a.split(" on ")[0] for a in lm]  # same records, in order

    con, lm = _routed(two_caption_params, adapter, "single")
    assert con == lm and all(c.endswith("no shadow.") for c in con)


def test_shard_dataset_items_and_data_version(params):
    data = pairs(params)
    stats = json.loads(open(f"{params.repurpose.out}/stats.json").read())
    assert len(data) == stats["kept_by_split"]["train"] and len(data) + stats["kept_by_split"]["val"] == 160
    sample, image = data[len(data) - 1]
    assert image.mode == "RGB" and image.size == (params.synth.image_size,) * 2
    assert sample.caption == sample.answer and sample.prompt == params.prompts.caption
    assert resolve_data_version(None, params.train.data) == stats["data_version"] == data.version
    with pytest.raises(IndexError):
        data[len(data)]
    # whole batches per rank, disjoint, from the shards' indices
    a = list(GlobalBatchSampler(len(data), 8, world_size=2, rank=0, seed=1, total_steps=3))
    b = list(GlobalBatchSampler(len(data), 8, world_size=2, rank=1, seed=1, total_steps=3))
    assert not {i for x in a for i in x} & {i for x in b for i in x}
    ids = [data[i][0].id for batch in a for i in batch]
    assert len(set(ids)) == len(ids)


def test_shard_dataset_reads_the_same_items_from_s3(params, s3_server):
    local = pairs(params)
    bucket, client = s3_server.make_bucket(), s3_server.client()
    folder = Path(params.repurpose.out)
    for path in folder.rglob("*"):
        if path.is_file():
            client.fput_object(bucket, f"pairs/{path.relative_to(folder)}", str(path))
    remote = ShardDataset(f"s3://{bucket}/pairs", "train", params.prompts.caption)
    assert len(remote) == len(local) and remote.version == local.version
    assert resolve_data_version(None, f"s3://{bucket}/pairs") == local.version
    for i in (0, len(local) - 1):
        (a, img_a), (b, img_b) = local[i], remote[i]
        assert (a.id, a.caption) == (b.id, b.caption) and img_a.tobytes() == img_b.tobytes()


def test_loader_workers_read_whole_batches_from_the_shards(params):
    from torch.utils.data import DataLoader

    params.repurpose.row_group_rows = 16  # many row groups: workers open the shards themselves
    data = pairs(params)
    sampler = GlobalBatchSampler(len(data), 8, seed=2, total_steps=4)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    got = [batch["ids"] for batch in loader]
    assert got == [[data[i][0].id for i in idx] for idx in sampler]
