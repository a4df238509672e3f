"""Understanding survives CAFe: per-sample L_lm averaging, the replayed L_lm source, the skill probes."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from cafe.config import ObjectiveConfig, ReplayConfig
from cafe.data.replay import ReplayDataset
from cafe.training.probes import format_regressions, invalid_choice, invalid_pope, invalid_rates, roc_auc
from cafe.training.step import lm_term
from cafe.training.terms import Terms, token_weights
from tests.conftest import pairs


def test_token_weights_give_each_sample_one_unit():
    targets = torch.tensor([[-100, 5, 6, 7, -100], [-100, -100, -100, 8, -100], [-100] * 5])
    w, n = token_weights(targets, "sample")
    assert n == 2 and torch.allclose(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]))
    w, n = token_weights(targets, "token")
    assert n == 4 and torch.equal(w, torch.ones(4))
    with pytest.raises(ValueError, match="lm_average"):
        token_weights(targets, "row")


@pytest.mark.parametrize("chunk", [0, 2])
def test_per_sample_lm_loss_is_the_mean_of_sample_means(adapter, params, chunk):
    from PIL import Image

    images = [Image.new("RGB", (params.synth.image_size,) * 2, c) for c in ("red", "blue", "green")]
    prompts = ["Is there a red circle in the image?", "Describe the image in detail.", "Describe the image briefly."]
    answers = ["Yes", "There are two objects on a grey background. A small red circle is at the top left. "
               "A large blue cross is in the center.", "a small red circle."]
    batch = {"images": images, "prompts": prompts, "answers": answers}
    adapter.model.eval()
    with torch.no_grad():
        each = [adapter.lm_loss(adapter.lm_inputs([i], [p], [a])) for i, p, a in zip(images, prompts, answers)]
        tokens = adapter.lm_loss(adapter.lm_inputs(images, prompts, answers))
    def term(average: str) -> float:
        terms = Terms(ObjectiveConfig(alpha_lm=1.0, lm_average=average), separate=True)
        return lm_term(adapter, batch, terms, chunk, backward=lambda t: None)()

    sample, token = term("sample"), term("token")
    assert sample.item() == pytest.approx(torch.stack(each).mean().item(), rel=1e-4)
    assert token.item() == pytest.approx(tokens.item(), rel=1e-4)
    assert abs(sample.item() - token.item()) > 1e-3  # the answers differ in length: the two must differ


def test_replay_draws_records_of_the_same_image_and_keeps_the_caption(params):
    data = pairs(params)
    records = json.loads(open(params.repurpose.input).read())
    by_image = {}
    for rec in records:
        by_image.setdefault(rec["image"], set()).add((rec["conversations"][0]["value"].replace("<image>", "").strip(),
                                                      rec["conversations"][1]["value"]))
    image_of = {rec["id"]: rec["image"] for rec in records}
    replay = ReplayDataset(data, ReplayConfig(data=params.repurpose.input, mix={"yesno": 1.0, "choice": 1.0}))
    torch.manual_seed(0)
    kinds = Counter()
    for i in range(len(replay)):
        sample, _ = replay[i]
        pair, _ = data[i]
        assert sample.caption == pair.caption and sample.id == pair.id
        assert (sample.prompt, sample.answer) in by_image[image_of[pair.id]]
        kinds["yesno" if sample.answer in ("Yes", "No") else "choice"] += 1
    assert min(kinds.values()) > 0.3 * len(replay)  # both kinds drawn, about half each


def test_replay_refuses_a_mixture_of_unknown_kinds(params):
    with pytest.raises(ValueError, match="names kinds"):
        ReplayDataset(pairs(params), ReplayConfig(data=params.repurpose.input, mix={"essay": 1.0}))
    with pytest.raises(ValueError, match="weight"):
        ReplayConfig(mix={"brief": 0.0})


def test_replayed_training_step_runs_with_both_step_kinds(params):
    from cafe.distributed import DistEnv
    from cafe.training.trainer import Trainer
    from tests.conftest import make_adapter

    params.train.lm_source = "replay"
    params.train.replay.data = params.repurpose.input
    params.train.max_steps, params.train.batch_size = 2, 8
    for step in ("three_pass", "shared_prefix"):
        params.train.step = step
        params.train.output = params.train.output + "-" + step
        out = Trainer(params.train, params, DistEnv(), progress=False).fit(
            pairs(params), lambda: make_adapter(params), resume=False)
        log = [json.loads(line) for line in open(out.parent / "train_log.jsonl")]
        assert len(log) == 2 and all(r["loss_lm"] > 0 and r["loss_con"] > 0 for r in log)


def test_roc_auc_and_invalid_answers():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.5] * 4, [1, 0, 1, 0]) == 0.5
    assert roc_auc([0.1, 0.9], [1, 0]) == 0.0
    assert not invalid_pope("Yes") and not invalid_pope("No, there is not.") and invalid_pope("a red circle.")
    q = "How many objects are in the image?\nOptions: A: one, B: two, C: three, D: four"
    assert not invalid_choice("B", q) and not invalid_choice("two", q)
    assert invalid_choice("a small red circle.", q) and invalid_choice("A B", q)
    rates = invalid_rates(["Yes", "a red circle."], ["B", "a circle", "C", "D"], [q] * 4)
    assert rates == {"pope_invalid": 0.5, "mmstar_invalid": 0.25}


def test_a_jump_in_invalid_answers_is_caught():
    q = "What colour is the circle?\nOptions: A: red, B: blue, C: green, D: white"
    base = invalid_rates(["Yes", "No"] * 10, ["A", "C", "blue", "D"] * 5, [q] * 20)
    kept = invalid_rates(["Yes", "No"] * 10, ["B", "C", "A", "D"] * 5, [q] * 20)
    # the collapse of issue 16: a CAFe model that captions every prompt
    lost = invalid_rates(["a small red circle."] * 20, ["a large red circle and a blue cross."] * 20, [q] * 20)
    assert format_regressions(base, kept) == []
    assert format_regressions(base, lost) == ["mmstar_invalid: 0.000 -> 1.000 (allowed +0.02)",
                                              "pope_invalid: 0.000 -> 1.000 (allowed +0.02)"]
