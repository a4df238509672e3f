"""benchmarks/reduced_base.py: the arms it parses and the arrival step it reports."""

import pytest

from benchmarks.reduced_base import arrival, parse_arms, reduced_params


def test_arrival_is_the_first_checkpoint_at_the_floor_in_step_order():
    rows = [{"step": 600, "yesno_auc": 0.9}, {"step": 200, "yesno_auc": 0.5}, {"step": 400, "yesno_auc": 0.76},
            {"step": 800, "yesno_auc": 0.6}]
    assert arrival(rows, 0.75) == 400
    assert arrival(rows, 0.95) is None


def test_arms_are_average_and_seed_and_a_bad_one_names_itself():
    assert parse_arms("sample:0,token:2,") == [("sample", 0), ("token", 2)]
    with pytest.raises(SystemExit, match="'mean:0'"):
        parse_arms("sample:0,mean:0")


def test_the_reduced_world_keeps_the_default_recipe(tmp_path):
    p = reduced_params(tmp_path, 300, [0.5, 0.5, 0.0])
    assert p.synth.object_count_weights == [0.5, 0.5, 0.0] and p.synth.train_images == 300
    assert p.pretrain.data.startswith(str(tmp_path)) and p.pretrain.vision_steps == 300
    assert p.pretrain.lr == 2e-3 and p.pretrain.frozen == ["vision_tower", "projector"]
