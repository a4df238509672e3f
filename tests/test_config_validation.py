"""Config validation: impossible values are refused when the config is loaded, each as one line naming the
dotted key, the rule and the value given, and reach the command line as a one-line error with a hint."""

import pytest
from typer.testing import CliRunner

from cafe.config import ConfigError, load_params


@pytest.mark.parametrize("override, expected", [
    ("pretrain.vision_steps=-1", "pretrain.vision_steps: must be >= 0 (got -1)"),
    ("pretrain.steps=0", "pretrain.steps: must be >= 1 (got 0)"),
    ("train.optim.lr=-0.001", "train.optim.lr: must be >= 0 (got -0.001)"),
    ("pretrain.lr=0", "pretrain.lr: must be > 0 (got 0)"),
    ("train.batch_size=0", "train.batch_size: must be >= 1 (got 0)"),
    ("train.optim.warmup_ratio=1", "train.optim.warmup_ratio: must be < 1 (got 1)"),
    ("pretrain.warmup_ratio=-0.1", "pretrain.warmup_ratio: must be >= 0 (got -0.1)"),
    ("train.objective.temperature=0", "train.objective.temperature: must be > 0 (got 0)"),
    ("train.captions=both", "train.captions: must be one of 'single' or 'short_long' (got 'both')"),
    ("train.objective.alpha_cn=3", "train.objective.alpha_cn: no such key (did you mean train.objective.alpha_con?)"),
    ("train.optim.betas=[0.9,1.5]", "train.optim.betas: beta2 must be in [0, 1) (got 1.5)"),
    ("evaluate.recall_ks=[1,0]", "evaluate.recall_ks: every K must be >= 1 (got [1, 0])"),
    ("synth.object_count_weights=[0.5,0.5]", "synth.object_count_weights: give three weights >= 0 (scenes of 1, 2 "
                                             "and 3 objects), at least one > 0 (got [0.5, 0.5])"),
    ("synth.object_count_weights=[0,0,0]", "at least one > 0 (got [0.0, 0.0, 0.0])"),
])
def test_impossible_values_are_one_line_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_params("params.yaml", [override])
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "params.yaml" in message and "-s KEY=VALUE" in message  # the hint: where to fix it


def test_both_loss_weights_zero_is_refused_but_either_alone_is_fine():
    with pytest.raises(ConfigError, match=r"train\.objective\.alpha_con: alpha_lm and alpha_con are both 0"):
        load_params(None, ["train.objective.alpha_con=0", "train.objective.alpha_lm=0"])
    assert load_params(None, ["train.objective.alpha_con=0"]).train.objective.alpha_lm == 1.0


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["train.batch_size=0", "evaluate.batch_size=-2"])
    assert "train.batch_size: must be >= 1 (got 0)" in str(err.value)
    assert "evaluate.batch_size: must be >= 1 (got -2)" in str(err.value)


def test_the_project_configs_are_valid():
    for path in ("params.yaml", "tests/params_tiny.yaml", "configs/cluster/llava-ov-0.5b.yaml"):
        load_params(path)


def test_the_cli_prints_one_line_and_exits_2():
    from cafe.cli import app

    result = CliRunner().invoke(app, ["synth", "-s", "pretrain.vision_steps=-5", "-s", "synth.out=/nonexistent/x"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: pretrain.vision_steps: must be >= 0 (got -5)"), lines


def test_a_missing_params_file_is_said_not_silently_replaced_by_the_class_defaults(tmp_path, monkeypatch):
    from cafe.cli import app

    sizes = ["-s", "synth.train_images=4", "-s", "synth.retrieval_images=4", "-s", "synth.probe_images=4"]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["synth", *sizes, "-s", "synth.out=world"])
    assert result.exit_code == 0, result.output
    assert "note: params.yaml not found in" in result.output and "using the class defaults" in result.output
    (tmp_path / "params.yaml").write_text("synth:\n  image_size: 96\n")
    result = CliRunner().invoke(app, ["synth", *sizes, "-s", "synth.out=world2"])
    assert result.exit_code == 0 and "not found" not in result.output, result.output


@pytest.mark.parametrize("steps", [1, 2, 10, 20])
def test_short_vision_warm_ups_run(params, world, steps):
    """torch's OneCycleLR divides by zero when its rising phase ends on step 0 (10 steps at the warm-up's 0.1)
    or on the last step (2 steps)."""
    from cafe.data.samples import load_instruction_samples
    from cafe.training.vision_warmup import warm_up_vision
    from tests.conftest import make_adapter

    samples = load_instruction_samples(world / "train" / "instructions.json")
    summary = warm_up_vision(make_adapter(params), samples, steps=steps, lr=1e-3, batch_size=4, progress=False)
    assert summary["seconds"] > 0
