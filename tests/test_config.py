import pytest

from cafe.config import ConfigError, load_params, parse_overrides


def test_params_file_loads_and_overrides_apply():
    p = load_params("params.yaml", ["train.objective.alpha_con=0", "train.max_steps=7"])
    assert p.train.objective.alpha_con == 0.0 and p.train.max_steps == 7
    assert p.model.family == "llava_onevision"


def test_paper_defaults_without_file(tmp_path):
    p = load_params(tmp_path / "absent.yaml")
    assert (p.train.objective.alpha_con, p.train.objective.alpha_lm, p.train.objective.temperature) == (10.0, 1.0, 0.05)
    assert (p.train.optim.lr, p.train.optim.lr_vision) == (1e-5, 2e-6)
    assert p.prompts.image_embed == "Compress this image in one word:"


def test_unknown_key_names_the_field(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("train:\n  objective:\n    alpha_cn: 3\n")
    with pytest.raises(ConfigError, match=r"train\.objective\.alpha_cn"):
        load_params(bad)


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_params(None, ["train.batch_size=many"])


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.max_steps"])


def test_digest_changes_with_the_section_it_covers():
    a = load_params(None)
    b = load_params(None, ["train.seed=5"])
    assert a.digest("synth") == b.digest("synth")
    assert a.digest("train") != b.digest("train")
