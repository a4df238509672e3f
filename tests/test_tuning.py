"""Parameter-efficient CAFe: trainable parts, LoRA (counts, save, load, merge), soft prompts, and the
unchanged trainer running LoRA + soft prompt end to end with resume."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cafe.distributed import DistEnv
from cafe.models import FAMILIES, load_adapter, merge
from cafe.training.optim import build_optimizer
from cafe.training.trainer import Trainer
from tests.conftest import make_adapter, pairs

TEXTS = ["a red circle.", "a large blue cross and a small white diamond."]


def _images(world, n):
    return [Image.open(world / "eval" / "images" / f"ret{i:06d}.png").convert("RGB") for i in range(n)]


def _parts(family, model):
    """(vision tower parameters, projector parameters) of each family, named by module, not by prefix."""
    inner = model.model
    if family == "qwen2_vl":
        merger = {id(p) for p in inner.visual.merger.parameters()}
        return [p for p in inner.visual.parameters() if id(p) not in merger], list(inner.visual.merger.parameters())
    projector = list(inner.multi_modal_projector.parameters())
    if family == "llava_onevision":
        projector.append(inner.image_newline)
    return list(inner.vision_tower.parameters()), projector


def _numel(params):
    return sum(p.numel() for p in params)


def _lora_size(model, r, names, under):
    return sum(r * (m.in_features + m.out_features) for n, m in under(model).named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in names)


# the default family in the fast suite; the others' LoRA round trips are slow under a loaded machine
ROUND_TRIP = [f if f == "llava_onevision" else pytest.param(f, marks=pytest.mark.slow) for f in sorted(FAMILIES)]


@pytest.fixture(params=sorted(FAMILIES))
def base(request, params, tmp_path):
    """A saved tiny base of each family (LoRA records the checkpoint it adapts)."""
    params.model.family = request.param
    make_adapter(params).save_pretrained(tmp_path / "base")
    return params, tmp_path / "base"


OPTIONS = {
    "full": [],
    "frozen vision tower": ["trainable.vision_tower=false"],
    "projector only": ["trainable.vision_tower=false", "trainable.llm=false"],
    "lora": ["lora.enabled=true", "lora.r=4"],
    "lora + vision lora, frozen projector": ["lora.enabled=true", "lora.r=4", "lora.vision=true", "trainable.projector=false"],
    "lora + soft prompt": ["lora.enabled=true", "lora.r=4", "soft_prompt.tokens=3"],
}


def _configure(params, option):
    for item in OPTIONS[option]:
        key, value = item.split("=")
        section, field = key.split(".")
        setattr(getattr(params.model, section), field, json.loads(value))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_trainable_parameter_counts(base, option):
    params, path = base
    family = params.model.family
    plain = load_adapter(path, params.prompts, params.model).model
    vision, projector = (_numel(p) for p in _parts(family, plain))
    total = _numel(plain.parameters())
    llm = total - vision - projector
    language = lambda m: m.model.language_model  # noqa: E731
    tower = lambda m: m.model.visual if family == "qwen2_vl" else m.model.vision_tower  # noqa: E731
    lora = params.model.lora
    expected = {
        "full": total,
        "frozen vision tower": projector + llm,
        "projector only": projector,
        "lora": projector + _lora_size(plain, 4, lora.target_modules, language),
        "lora + vision lora, frozen projector": _lora_size(plain, 4, lora.target_modules, language)
        + _lora_size(plain, 4, lora.vision_target_modules, tower),
        "lora + soft prompt": projector + _lora_size(plain, 4, lora.target_modules, language) + 3 * llm_hidden(plain),
    }[option]
    _configure(params, option)
    adapter = load_adapter(path, params.prompts, params.model)
    trainable = [p for p in adapter.model.parameters() if p.requires_grad]
    assert _numel(trainable) == expected
    # the trainer's optimizer sees exactly these
    optimizer = build_optimizer(adapter.model, params.train.optim)
    assert sum(_numel(g["params"]) for g in optimizer.param_groups) == expected


def llm_hidden(model):
    return model.get_input_embeddings().weight.shape[1]


def test_lora_and_full_training_of_one_part_is_refused(base):
    params, path = base
    params.model.lora.enabled = True
    params.model.trainable.llm = True
    with pytest.raises(ValueError, match="trainable.llm"):
        load_adapter(path, params.prompts, params.model)


def _perturb(adapter, seed=0):
    """Stand-in for training: random LoRA B matrices (zero at init), projector and soft prompt."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("family", ROUND_TRIP)
def test_lora_adapter_save_load_and_merge_give_identical_embeddings(family, params, world, tmp_path):
    params.model.family = family
    path = tmp_path / "base"
    make_adapter(params).save_pretrained(path)
    params.model.lora.enabled, params.model.lora.r, params.model.soft_prompt.tokens = True, 4, 2
    adapter = load_adapter(path, params.prompts, params.model)
    adapter.model.eval()
    images = _images(world, 2)
    before = adapter.encode_images(images)
    _perturb(adapter)
    tuned_images, tuned_texts = adapter.encode_images(images), adapter.encode_texts(TEXTS)
    assert (tuned_images - before).abs().max() > 1e-3  # the adapters do something

    adapter.save_pretrained(tmp_path / "lora")
    saved = {p.name for p in (tmp_path / "lora").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "soft_prompt.safetensors", "trained_parts.safetensors"} <= saved
    assert "model.safetensors" not in saved  # adapters on their own
    lora_bytes = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    assert lora_bytes < (path / "model.safetensors").stat().st_size

    params.model.lora.enabled, params.model.soft_prompt.tokens = False, 0  # the checkpoint says what it holds
    again = load_adapter(tmp_path / "lora", params.prompts, params.model)
    again.model.eval()
    torch.testing.assert_close(again.encode_images(images), tuned_images, atol=0, rtol=0)
    torch.testing.assert_close(again.encode_texts(TEXTS), tuned_texts, atol=0, rtol=0)

    merged_dir = merge(tmp_path / "lora", tmp_path / "merged", params.prompts, params.model)
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    assert not any(".lora_" in k or "base_layer" in k for k in load_file(merged_dir / "model.safetensors"))
    merged = load_adapter(merged_dir, params.prompts, params.model)
    merged.model.eval()
    assert merged.peft is None
    torch.testing.assert_close(merged.encode_images(images), tuned_images, atol=2e-5, rtol=0)
    torch.testing.assert_close(merged.encode_texts(TEXTS), tuned_texts, atol=2e-5, rtol=0)
    prompts = ["Describe the image briefly."] * 2
    assert merged.generate(images, prompts, max_new_tokens=6) == again.generate(images, prompts, max_new_tokens=6)


def test_soft_prompt_changes_the_embedding_is_trained_and_saved(params, world, tmp_path):
    plain = make_adapter(params)
    plain.save_pretrained(tmp_path / "base")
    params.model.soft_prompt.tokens = 4
    adapter = load_adapter(tmp_path / "base", params.prompts, params.model)
    for a in (plain, adapter):
        a.model.eval()
    images = _images(world, 2)
    batch = adapter.image_embed_inputs(images)
    assert batch["soft_prompt_mask"].sum(dim=1).tolist() == [4, 4]
    assert (adapter.encode_images(images) - plain.encode_images(images)).abs().max() > 1e-3
    assert (adapter.encode_texts(TEXTS) - plain.encode_texts(TEXTS)).abs().max() > 1e-3
    # the language instruction and generation carry no soft prompt
    lm = adapter.lm_inputs(images, ["Describe the image briefly."] * 2, TEXTS)
    torch.testing.assert_close(adapter.lm_loss(lm), plain.lm_loss(plain.lm_inputs(images, ["Describe the image briefly."] * 2, TEXTS)))

    soft = adapter.soft_prompt.embeddings
    start = soft.detach().clone()
    optimizer = build_optimizer(adapter.model, params.train.optim.model_copy(update={"lr": 1e-2}))
    loss = -(adapter.embed(adapter.image_embed_inputs(images)) * adapter.embed(adapter.text_embed_inputs(TEXTS))).sum()
    loss.backward()
    assert soft.grad is not None and soft.grad.abs().min(dim=1).values.gt(0).all()  # every vector gets gradient
    optimizer.step()
    assert (soft.detach() - start).abs().min(dim=1).values.gt(0).all()

    adapter.save_pretrained(tmp_path / "soft")
    assert "cafe_soft_prompt" not in "".join(load_file(tmp_path / "soft" / "model.safetensors"))
    again = load_adapter(tmp_path / "soft", params.prompts, params.model)
    again.model.eval()
    torch.testing.assert_close(again.soft_prompt.embeddings, soft.detach(), atol=0, rtol=0)
    torch.testing.assert_close(again.encode_texts(TEXTS), adapter.encode_texts(TEXTS), atol=0, rtol=0)


def test_evaluating_a_base_without_fresh_tuning_leaves_it_plain(params, tmp_path):
    make_adapter(params).save_pretrained(tmp_path / "base")
    params.model.lora.enabled, params.model.soft_prompt.tokens = True, 2
    adapter = load_adapter(tmp_path / "base", params.prompts, params.model, fresh_tuning=False)
    assert adapter.peft is None and adapter.soft_prompt is None


@pytest.mark.slow
def test_trainer_runs_lora_with_soft_prompt_and_resumes_exactly(params, tmp_path):
    make_adapter(params).save_pretrained(tmp_path / "base")
    samples = pairs(params)
    params.model.lora.enabled, params.model.lora.r, params.model.soft_prompt.tokens = True, 4, 2
    # no LoRA dropout: the trainer's resume restores the RNG before the data loader draws its seed, so
    # random masks after a resume differ from an uninterrupted run's (a trainer matter, not LoRA's)
    params.model.lora.dropout = 0.0
    params.train.max_steps, params.train.batch_size = 4, 8
    params.train.optim.lr = params.train.optim.lr_vision = 1e-2

    def run(out, stop_after=None):
        params.train.output = str(out)
        return Trainer(params.train, params, DistEnv(), progress=False).fit(samples, str(tmp_path / "base"),
                                                                             stop_after=stop_after)
    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    resumed = run(tmp_path / "b")
    assert (straight / "adapter_config.json").is_file() and not (straight / "model.safetensors").exists()
    for name in ("adapter_model.safetensors", "soft_prompt.safetensors", "trained_parts.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    start = load_adapter(tmp_path / "base", params.prompts, params.model)
    trained = load_adapter(straight, params.prompts, params.model)
    assert (trained.soft_prompt.embeddings - start.soft_prompt.embeddings).abs().max() > 0
    base_weights = load_file(tmp_path / "base" / "model.safetensors")
    for name, p in trained.model.named_parameters():  # the base weights are untouched
        if ".lora_" not in name and not name.startswith("cafe_soft_prompt") and trained.part_of(name) != "projector":
            key = name.replace(".base_layer", "")
            if key in base_weights:
                torch.testing.assert_close(p.detach(), base_weights[key], atol=0, rtol=0, msg=name)
