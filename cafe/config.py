"""One typed config for every stage, loaded from ``params.yaml``.

The defaults in the classes are the paper's settings (CAFe, section 4.1); ``params.yaml`` holds the values
of the embedded default (a tiny model trained on CPU in minutes). Every stage saves the config it ran with
next to its outputs, so the lineage of an artifact is always readable.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SynthConfig(_Section):
    """The generated shapes world (`cafe synth`)."""

    out: str = "data/shapes"
    seed: int = 0
    eval_seed: int = 1
    # a third world for tuning (learning rates, mixtures, budgets); None = not written
    dev_seed: Optional[int] = 2
    # share of the scene space held out for the evaluation world, and as much again for the dev world: a
    # scene's world is a hash of its content, so the training world never draws a dev or evaluation scene
    held_out_share: float = Field(0.1, gt=0, le=0.25)
    image_size: int = Field(64, ge=16)
    train_images: int = Field(4000, ge=1)
    retrieval_images: int = Field(500, ge=1)
    probe_images: int = Field(200, ge=1)
    object_count_weights: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.4])
    # one MMStar-style multiple-choice record per training image (kind "choice")
    choice_records: bool = True


class TinyModelConfig(_Section):
    """Sizes of the tiny model of the configured family built from config (vision tower + LM)."""

    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 16
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    max_positions: int = 512


class LoraConfig(_Section):
    """LoRA adapters (peft) on the language model's linear layers, and optionally the vision tower's.
    Module names are matched by their last component, only inside the part they belong to."""

    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: float = 32.0
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    vision: bool = False
    # SigLIP / CLIP towers name them q/k/v/out_proj + fc1/fc2; Qwen2-VL's tower qkv/proj + fc1/fc2
    vision_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "qkv", "proj", "fc1", "fc2"])


class SoftPromptConfig(_Section):
    """Learnable soft prompt (VladVA): ``tokens`` trainable vectors inserted into both embedding
    instructions just before the prompt words, initialised from the prompt words' own embeddings."""

    tokens: int = Field(0, ge=0)  # 0 = off


class TrainableConfig(_Section):
    """Which parts train in full. ``None`` = in full unless LoRA is on (a parameter-efficient run then
    trains the LoRA adapters, the soft prompt and the projector)."""

    vision_tower: bool | None = None
    projector: bool = True
    llm: bool | None = None


class ModelConfig(_Section):
    """Which checkpoint to load and how to run it."""

    family: str = "llava_onevision"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    embed_padding_side: Literal["left", "right"] = "left"
    # captions and answers longer than this many tokens are cut at training (counted in the train log)
    max_text_tokens: int = Field(512, ge=1)
    # megabytes of processed images kept in memory per process, so an image seen again skips the image
    # processor (training visits each image many times); 0 = off
    image_cache_mb: int = Field(0, ge=0)
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    soft_prompt: SoftPromptConfig = Field(default_factory=SoftPromptConfig)
    trainable: TrainableConfig = Field(default_factory=TrainableConfig)


class PromptConfig(_Section):
    """Instructions (paper Table 1). The embedding prompts end the user turn; the assistant's first
    position is where the embedding is read."""

    system: str = "You are a helpful assistant."
    image_embed: str = "Compress this image in one word:"
    text_embed: str = "Compress this sentence in one word:"
    caption: str = "Describe the image briefly."


class ObjectiveConfig(_Section):
    """L = alpha_lm * L_lm + alpha_con * L_con (paper Eq. 3)."""

    alpha_lm: float = Field(1.0, ge=0)
    alpha_con: float = Field(10.0, ge=0)
    temperature: float = Field(0.05, gt=0)
    # Eq. 1 as printed sums the two directions; the published code averages them.
    directions: Literal["sum", "mean"] = "mean"
    # how L_lm averages its token losses over the global batch: "token" (one mean over every answer token,
    # so long answers outweigh one-word ones) or "sample" (each sample's token mean, then the mean over samples)
    lm_average: Literal["token", "sample"] = "token"
    # LLaVE-style hardness weighting of L_con's negatives: each negative's term in the denominator is scaled by
    # exp(hardness * its similarity) (detached), so harder negatives weigh more; 0 = plain InfoNCE
    hardness: float = Field(0.0, ge=0)


class OptimConfig(_Section):
    lr: float = Field(1e-5, ge=0)  # projector + LLM
    lr_vision: float = Field(2e-6, ge=0)  # vision tower
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    # "per_loss" clips the contrastive and language gradients separately before adding them, so that
    # alpha_con = 10 cannot starve the language term under one shared clip; "global" clips their sum.
    # "balanced": per-loss clipping measured every `balance_every` steps (two backwards), its factors applied
    # as loss weights on the steps between (one backward; cafe/training/optim.py LossBalance).
    # Under train.strategy=deepspeed the engine clips the total (no rank holds a whole per-term gradient).
    clip_mode: Literal["per_loss", "balanced", "global", "none"] = "per_loss"
    clip_norm: float = Field(1.0, gt=0)
    balance_every: int = Field(10, ge=1)


class ReplayConfig(_Section):
    """The instruction mixture replayed into L_lm (``train.lm_source: replay``): each pair's language sample is
    one of the instruction records of the same image, its kind drawn with these weights (kinds an image lacks
    are skipped, the rest renormalised)."""

    data: str = "data/shapes/train/instructions.json"  # LLaVA-OneVision records (JSON list) with ``kind``
    mix: dict[str, float] = Field(default_factory=lambda: {"brief": 1.0, "detailed": 1.0, "yesno": 2.0, "choice": 1.0})

    @model_validator(mode="after")
    def _positive(self) -> "ReplayConfig":
        if not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"train.replay.mix {self.mix}: give each record kind a weight >= 0, at least one > 0")
        return self


class TrainConfig(_Section):
    """`cafe train` (CAFe fine-tuning) and, with alpha_con = 0, `cafe pretrain`."""

    data: str = "data/pairs"  # the repurpose stage's output folder (Parquet shards)
    # "single": the paper's one caption for both losses; "short_long": the short caption for L_con and the
    # long caption for L_lm (VladVA)
    captions: Literal["single", "short_long"] = "single"
    # what L_lm trains on: "pairs", the repurposed caption of each pair (the paper); "replay", an instruction
    # record of the same image drawn from ``replay`` (L_con stays on the pair's caption)
    lm_source: Literal["pairs", "replay"] = "pairs"
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    base_model: str = "models/base"
    output: str = "runs/cafe"
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(0, ge=0)  # > 0 overrides epochs
    batch_size: int = Field(32, ge=1)  # per process
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    save_every: int = Field(0, ge=0)  # steps; 0 = only at the end
    keep_last: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    # steps between validation losses on the data's val/ split (and one after the last step); 0 = off
    eval_every: int = Field(0, ge=0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # bf16 autocast on GPU (master weights stay in model.dtype); CPU runs always compute in fp32
    precision: Literal["bf16", "fp32"] = "bf16"
    # gradient caching: > 0 embeds (and runs the language loss on) this many samples at a time, so the
    # contrastive batch can grow without activation memory growing; 0 = the whole per-process batch at once
    grad_cache_chunk: int = Field(0, ge=0)
    # "three_pass": separate language, image-embedding and text-embedding forwards (the reference);
    # "shared_prefix": one packed forward per sample for both objectives (cafe.training.shared_prefix)
    step: Literal["three_pass", "shared_prefix"] = "three_pass"
    # distributed strategy (docs/distributed.md)
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    deepspeed_config: str = ""  # a JSON file in configs/deepspeed/ when strategy is deepspeed
    checkpoint_store: str = ""  # an open_store URI for checkpoints; empty = the local output folder
    # mined hard negatives (`cafe mine`'s output folder) added to L_con's denominators; None = in-batch only
    negatives: Optional[str] = None
    negatives_per_sample: int = Field(1, ge=1)  # mined negatives per sample and direction (of the k mined)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)


class PretrainConfig(_Section):
    """`cafe pretrain`: the embedded stand-in for a pretrained LVLM, trained language-only."""

    data: str = "data/shapes/train/instructions.json"
    output: str = "models/base"
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    # vision tower during the language-only steps when it is not frozen: None = lr
    lr_vision: Optional[float] = Field(None, ge=0)
    # vision warm-up before the language-only steps (cafe/training/vision_warmup.py): per-cell attributes.
    # "words": tower + projector learn to put the LM's own embeddings of the words naming each cell's object
    # at that cell's image token (LLaVA's projector alignment in miniature); "heads": the tower alone, with
    # linear heads that are thrown away
    vision_target: Literal["words", "heads"] = "words"
    vision_steps: int = Field(600, ge=0)  # 0 = no warm-up
    vision_lr: float = Field(1e-3, gt=0)
    vision_batch_size: int = Field(64, ge=1)
    # a model saved after a warm-up (an earlier run's <output>/warmed): start the language-only steps from it
    vision_init: str = ""
    # parts kept as the warm-up left them during the language-only steps (no gradients at all)
    frozen: list[Literal["vision_tower", "projector"]] = Field(default_factory=lambda: ["vision_tower", "projector"])
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    # L_lm averaging (ObjectiveConfig.lm_average): "sample" lets one-word answers (yes/no, a letter) weigh
    # as much as a detailed description
    lm_average: Literal["token", "sample"] = "token"
    seed: int = 0
    save_every: int = Field(250, ge=0)  # steps; a long pretraining keeps its progress


class SourceConfig(_Section):
    """One input of a data mixture: LLaVA-OneVision records in JSON, JSON lines or Parquet (image bytes)."""

    name: str
    paths: list[str]  # files or glob patterns; the format comes from the suffix (.json, .jsonl, .parquet)
    image_root: str = ""  # images named by relative path are looked up here (never outside it)
    weight: float = Field(1.0, gt=0, le=1)  # keep this fraction, chosen by a stable hash of the record id
    count: int = Field(0, ge=0)  # > 0: at most this many records of the kept kinds, in file order
    keep_kinds: list[str] = Field(default_factory=list)  # empty: all; records without a ``kind`` always pass


class ShortCaptionConfig(_Section):
    """How the short (contrastive) caption is cut from the long one (VladVA: short for L_con, long for L_lm)."""

    rule: Literal["first_sentence", "max_words", "full"] = "first_sentence"
    max_words: int = Field(32, ge=1)  # applied after every rule


class ImageRulesConfig(_Section):
    """Images that are refused (quarantined) rather than trained on."""

    max_pixels: int = Field(64_000_000, ge=1)  # width x height in the header; above: a decompression bomb
    max_side: int = Field(16384, ge=1)
    min_side: int = Field(8, ge=1)
    max_file_bytes: int = Field(64 * 2**20, ge=1)


class RepurposeConfig(_Section):
    """Instruction records -> (image, short caption, long caption) Parquet shards (paper section 4.1)."""

    mixture: str = ""  # a YAML file with ``sources:`` (a list of SourceConfig); empty: the one source below
    input: str = "data/shapes/train/instructions.json"
    image_root: str = "data/shapes/train"
    keep_kinds: list[str] = Field(default_factory=lambda: ["brief"])
    out: str = "data/pairs"
    workers: int = Field(0, ge=0)  # 0: every core
    val_fraction: float = Field(0.01, ge=0, lt=1)
    records_per_shard: int = Field(10_000, ge=1)
    max_shard_bytes: int = Field(512 * 2**20, ge=1)  # a shard also ends when its images reach this size
    # the unit training reads at once: one random item costs one row group, so keep it small for large images
    row_group_rows: int = Field(32, ge=1)
    short_caption: ShortCaptionConfig = Field(default_factory=ShortCaptionConfig)
    max_caption_chars: int = Field(4000, ge=1)  # longer long captions are quarantined (caption_too_long)
    images: ImageRulesConfig = Field(default_factory=ImageRulesConfig)
    near_duplicates: bool = False  # also drop images within ``near_duplicate_distance`` of a kept one (pHash)
    near_duplicate_distance: int = Field(2, ge=0, le=3)
    max_quarantine_share: float = Field(0.05, ge=0, le=1)  # of the records not filtered out; above: exit 1
    progress: bool = True


MINE_RULES = ("caption", "image_hash", "near_duplicate", "margin")


class MineConfig(_Section):
    """`cafe mine`: hard negatives for every training pair from a model's nearest neighbours (cafe/mining)."""

    data: str = "data/pairs"  # the repurposed pairs to mine (their train split)
    split: str = "train"
    # a model folder, or a registry version / alias of ``registry.name`` (e.g. "production", "latest", "3")
    model: str = "runs/cafe/model"
    out: str = "data/negatives"  # beside the pairs: shards + data_version.json + summary.json
    # model: a model's nearest neighbours after the false-negative rules; attribute_swaps: rule-made captions
    # (colours, shapes, sizes, positions, counts replaced or swapped, cafe/mining/swaps.py), no model needed;
    # both: the swaps first, then the mined ones, k in all
    source: Literal["model", "attribute_swaps", "both"] = "model"
    k: int = Field(4, ge=1)  # negatives kept per pair and direction (texts for an image, images for a text)
    candidates: int = Field(64, ge=1)  # nearest neighbours searched per query before the rules
    # false-negative rules (each drops a candidate): same normalised caption, same image sha256, a
    # near-duplicate image (pHash within near_duplicate_distance bits), a score within ``margin`` of the positive
    rules: list[Literal["caption", "image_hash", "near_duplicate", "margin"]] = Field(
        default_factory=lambda: list(MINE_RULES))
    margin: float = 0.05  # cosine: candidates scoring above (positive score - margin) are dropped
    near_duplicate_distance: int = Field(4, ge=0, le=32)
    # sample the k negatives at random from neighbour ranks [lo, hi) instead of taking the hardest survivors
    rank_range: Optional[tuple[int, int]] = None
    # auto: exact up to exact_limit pairs, a faiss HNSW graph beyond; ivf: a faiss inverted-file index
    index: Literal["auto", "exact", "hnsw", "ivf"] = "auto"
    exact_limit: int = Field(100_000, ge=1)
    chunk: int = Field(4096, ge=1)  # rows per block of the exact search (memory ~ chunk^2 floats)
    hnsw_m: int = Field(32, ge=4)  # graph links per node
    ef_construction: int = Field(64, ge=8)
    ef_search: int = Field(128, ge=1)  # HNSW search breadth to start from (doubled until recall_target)
    nlist: int = Field(0, ge=0)  # IVF lists; 0 = about 4 sqrt(n)
    nprobe: int = Field(32, ge=1)  # IVF lists searched to start from (doubled until recall_target)
    # approximate search: recall@candidates measured against exact search on recall_sample queries; the search
    # widens until it reaches recall_target (0 = take the starting breadth as it is)
    recall_target: float = Field(0.95, ge=0, le=1)
    recall_sample: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1)  # embedding batch
    cache_dir: str = ".cache/cafe/embeddings"  # "" = never cache embeddings
    seed: int = 0
    progress: bool = True

    @model_validator(mode="after")
    def _window(self) -> "MineConfig":
        if self.rank_range is not None:
            lo, hi = self.rank_range
            if not 0 <= lo < hi <= self.candidates:
                raise ValueError(f"mine.rank_range {self.rank_range}: need 0 <= lo < hi <= mine.candidates "
                                 f"({self.candidates})")
        return self


EVAL_PARTS = ("retrieval", "captions", "pope", "throne", "sugarcrepe", "mmstar", "geometry", "mmeb")


class EvalConfig(_Section):
    """`cafe evaluate`: which parts of the suite run and how much each costs."""

    data: str = "data/shapes/eval"
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(32, ge=1)  # brief captions
    recall_ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    parts: list[Literal[EVAL_PARTS]] = Field(default_factory=lambda: list(EVAL_PARTS[:-1]))  # mmeb: opt in
    # at most this many items per part (images, questions, or pairs per subset/split); absent or 0 = all
    max_items: dict[str, int] = Field(default_factory=dict)
    cache_dir: str = ".cache/cafe/embeddings"  # "" = never cache embeddings
    similarity_chunk: int = Field(1024, ge=1)  # query rows per block of the similarity matrix
    detail_prompt: str = "Describe the image in detail."
    detail_max_new_tokens: int = Field(64, ge=1)  # THRONE descriptions
    choice_max_new_tokens: int = Field(4, ge=1)  # POPE and MMStar answers
    throne_vocabulary: str = ""  # class -> synonyms JSON; "" = <data>/throne/vocabulary.json
    geometry_max_points: int = Field(2000, ge=2)  # embeddings per modality kept for the geometry metrics and the scatter
    scatter_method: Literal["auto", "umap", "pca"] = "auto"
    report: bool = True  # report.md + report.html next to metrics.json
    # `cafe prompts rank`: candidate [image prompt, text prompt] pairs, scored on this many retrieval images
    prompt_candidates: list[tuple[str, str]] = Field(default_factory=lambda: [
        ("Compress this image in one word:", "Compress this sentence in one word:"),
        ("Describe the image in one word:", "Describe the sentence in one word:"),
        ("Describe the image briefly.", "Describe the sentence briefly."),
        ("What is in the image?", "What is in the sentence?"),
        ("In one word:", "In one word:"),
    ])
    prompt_rank_images: int = Field(100, ge=1)


class GateConfig(_Section):
    """`cafe gate`: absolute floors and the largest allowed regression against a reference model, each
    judged with a bootstrap confidence interval from the per-item results."""

    floors: dict[str, float] = Field(default_factory=dict)  # metric -> lowest acceptable value
    # metric -> highest acceptable value: ceilings of lower-is-better metrics (invalid-answer rates)
    max_value: dict[str, float] = Field(default_factory=dict)
    max_regression: dict[str, float] = Field(default_factory=dict)  # metric -> largest allowed drop vs reference
    # lower is better (a rise is a regression) for these, for every *_invalid_rate / *_empty_rate metric
    # (cafe.evaluation.per_item.lower_is_better) and for every metric with a max_value
    lower_is_better: list[str] = Field(default_factory=lambda: ["modality_gap"])
    reference_alias: str = "production"  # the registry alias compared against; "" = always the given reference
    require_reference: bool = True  # regression checks without a reference fail (else they pass, saying so)
    confidence: float = Field(0.95, gt=0, lt=1)
    resamples: int = Field(1000, ge=10)
    geometry_resamples: int = Field(200, ge=10)  # embedding-geometry metrics cost an eigendecomposition each
    seed: int = 0


class ElasticConfig(_Section):
    """torchrun elastic training: workers only, c10d rendezvous, between ``min_nodes`` and ``max_nodes``."""

    enabled: bool = False
    min_nodes: int = Field(1, ge=1)
    max_nodes: int = Field(1, ge=1)
    max_restarts: int = Field(3, ge=0)
    rdzv_port: int = Field(29400, ge=1, le=65535)


class Toleration(_Section):
    key: Optional[str] = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None


class LaunchConfig(_Section):
    """`cafe launch`: the training job on a Kubernetes cluster (Kubeflow PyTorchJob or Trainer v2 TrainJob)."""

    name: str = "cafe-train"
    namespace: str = "cafe"
    kind: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    image: str = "ghcr.io/cafe-project/cafe:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str = ""  # empty: the namespace's default
    nodes: int = Field(1, ge=1)  # pods; for an elastic job the initial number of workers
    gpus_per_node: int = Field(1, ge=0)  # 0 = a CPU job (gloo)
    gpu_resource: str = "nvidia.com/gpu"
    nproc_per_node: int = Field(0, ge=0)  # processes per pod; 0 = gpus_per_node (1 on CPU)
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"  # /dev/shm for data-loader workers and NCCL
    global_batch: int = Field(0, ge=0)  # > 0 sets train.batch_size = global_batch / (nodes * nproc_per_node)
    master_port: int = Field(23456, ge=1, le=65535)
    elastic: ElasticConfig = Field(default_factory=ElasticConfig)
    backoff_limit: int = Field(3, ge=0)  # pod restarts before the job fails (resumes from the newest checkpoint)
    ttl_seconds_after_finished: int = Field(0, ge=0)  # 0 = keep the finished job
    secret: str = "cafe-s3-credentials"  # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    s3_endpoint: str = "http://minio.cafe.svc.cluster.local:9000"
    nccl_env: dict[str, str] = Field(default_factory=lambda: {
        "NCCL_DEBUG": "WARN", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"})
    env: dict[str, str] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    runtime: str = "torch-distributed"  # Trainer v2 ClusterTrainingRuntime
    kubeconfig: str = ""  # empty: ~/.kube/config, or the in-cluster service account
    context: str = ""
    poll_seconds: int = Field(30, ge=1)
    timeout_seconds: int = Field(7 * 24 * 3600, ge=1)

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    @model_validator(mode="after")
    def _consistent(self) -> "LaunchConfig":
        # pod and service names are <name>-worker-<i>: a DNS label with room for the suffix
        if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", self.name) or len(self.name) > 40:
            raise ValueError(f"name {self.name!r}: use lower-case letters, digits and '-', at most 40 characters")
        e = self.elastic
        if e.enabled and not e.min_nodes <= self.nodes <= e.max_nodes:
            raise ValueError(f"elastic job: need elastic.min_nodes ({e.min_nodes}) <= nodes ({self.nodes}) "
                             f"<= elastic.max_nodes ({e.max_nodes})")
        world = self.nodes * self.procs_per_node
        if self.global_batch and self.global_batch % world:
            raise ValueError(f"global_batch {self.global_batch} does not split over nodes x processes = {world}")
        return self


class RegistryConfig(_Section):
    """`cafe register` / `cafe registry`: where versions live and under which name."""

    store: str = "registry"  # a local folder, file://..., or s3://bucket/prefix (endpoint from CAFE_S3_ENDPOINT)
    name: str = "cafe"
    alias_on_register: str = "candidate"  # "" registers without moving an alias
    experiments: bool = False  # `dvc exp run` registers too (else only `dvc repro` and the other orchestrators do)


class ServeConfig(_Section):
    """`cafe serve` / `cafe index`: the registered model behind KServe's V1/V2 endpoints, and its traffic log."""

    model_name: str = "cafe"  # the KServe model name: /v1/models/<model_name>:predict
    ref: str = "production"  # registry alias or version served when no model directory is given
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    top_k: int = Field(10, ge=1)  # gallery results returned per query (and logged)
    gallery: str = "data/shapes/eval/retrieval_karpathy.json"  # Karpathy JSON or an image folder
    index_store: str = "indexes"  # gallery embeddings per model version (open_store URI)
    traffic_store: str = "traffic"  # request and feedback log (open_store URI)
    log_embeddings: bool = True
    max_new_tokens: int = Field(32, ge=1)  # generation length when a request does not ask
    batch_size: int = Field(64, ge=1)
    # what one request may ask for (4xx beyond; images also follow repurpose.images, the data stage's policy)
    max_body_bytes: int = Field(32 * 2**20, ge=1024)  # 413 beyond
    max_instances: int = Field(64, ge=1)  # instances / inputs / messages per request
    max_text_chars: int = Field(4000, ge=1)
    max_top_k: int = Field(100, ge=1)
    max_new_tokens_limit: int = Field(256, ge=1)  # the most a request's max_new_tokens / max_tokens may ask


class MonitorConfig(_Section):
    """`cafe monitor`: drift and retrieval quality of a traffic window against the served version's
    reference (stored at registration), with the thresholds of the ok / warn / retrain decision."""

    traffic_store: str = "traffic"
    out: str = "monitor"  # summary JSON + Evidently HTML (and history.jsonl) go here (open_store URI)
    ref: str = "production"  # the registered version whose reference the window is compared with
    window_hours: float = Field(24.0, ge=0)  # 0 = no time bound
    window_max_requests: int = Field(5000, ge=0)  # the newest N requests of the window; 0 = all
    min_requests: int = Field(50, ge=1)  # fewer embeddings: too small to judge drift
    min_feedback: int = Field(30, ge=1)  # fewer feedback-labelled queries: too small to judge quality
    # Evidently embedding drift: "model" (classifier ROC AUC), "mmd", "distance" (cosine), "ratio"
    drift_method: Literal["model", "mmd", "distance", "ratio"] = "model"
    drift_threshold: float | None = None  # None = Evidently's default for the method
    drift_pca_components: int | None = 20
    similarity_p_value: float = Field(0.01, gt=0, lt=1)  # K-S test on the top-1 similarity distribution
    recall_k: int = Field(5, ge=1)  # feedback R@K and probe R@K use this K (<= serve.top_k)
    max_feedback_drop: float = 0.15  # retrain when feedback R@K is surely below reference - this
    max_probe_drop: float = 0.10  # retrain when the probe set's R@K (current model) drops more than this
    max_gap_change: float = 0.10  # warn when the modality gap moves more than this from the reference
    max_invalid_fraction: float = Field(0.05, ge=0, le=1)  # warn above this share of NaN / missing embeddings
    confidence: float = Field(0.95, gt=0, lt=1)  # one-sided Wilson bound on feedback R@K
    probe: str = "data/shapes/eval/retrieval_karpathy.json"  # labelled probe set (Karpathy JSON); "" = none
    probe_images: int = Field(100, ge=0)  # 0 = all
    reference_images: int = Field(300, ge=1)  # validation images embedded for the reference
    report: bool = True
    # the retraining the monitoring pipeline starts on `retrain`: the traffic window as pairs, plus overrides
    retrain_overrides: list[str] = Field(default_factory=list)


class Params(_Section):
    synth: SynthConfig = Field(default_factory=SynthConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    repurpose: RepurposeConfig = Field(default_factory=RepurposeConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    def digest(self, *sections: str) -> str:
        """Short content hash of the named sections (all if none), for caching and lineage."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A params file or override that does not fit the config schema."""


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["train.max_steps=10", "objective.alpha_con=0"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _problem(err: dict) -> str:
    """One pydantic error as ``dotted.key: what is wrong (got value)``."""
    key = ".".join(str(p) for p in err["loc"])
    ctx, kind, got = err.get("ctx") or {}, err["type"], err.get("input")
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        what = f"must be {bounds[kind]} {int(bound) if float(bound).is_integer() else bound}"
    elif kind == "literal_error":
        what = f"must be one of {ctx.get('expected')}"
    elif kind == "extra_forbidden":
        section = ".".join(str(p) for p in err["loc"][:-1])
        known = _section_keys(err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        what = "no such key" + (f" (did you mean {section + '.' if section else ''}{close[0]}?)" if close else "")
    elif kind == "value_error":
        message = err["msg"].removeprefix("Value error, ")
        return message if message.startswith(key) else f"{key}: {message}"
    else:
        what = err["msg"][:1].lower() + err["msg"][1:]
    return f"{key}: {what} (got {got!r})"


def _section_keys(loc: tuple) -> list[str]:
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        model = field.annotation if field else None
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def validate(params: Params) -> Params:
    """Reject values that fit each field alone but cannot run together, as ``dotted.key: ... (got value)``
    problems in one :class:`ConfigError` (the field ranges themselves are the schema's ``Field`` bounds)."""
    problems = []
    o = params.train.objective
    if o.alpha_lm == 0 and o.alpha_con == 0:
        problems.append("train.objective.alpha_con: alpha_lm and alpha_con are both 0, nothing would train (got 0)")
    for name, beta in zip(("beta1", "beta2"), params.train.optim.betas):
        if not 0 <= beta < 1:
            problems.append(f"train.optim.betas: {name} must be in [0, 1) (got {beta})")
    weights = params.synth.object_count_weights
    if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        problems.append("synth.object_count_weights: give three weights >= 0 (scenes of 1, 2 and 3 objects), "
                        f"at least one > 0 (got {weights})")
    if any(k < 1 for k in params.evaluate.recall_ks):
        problems.append(f"evaluate.recall_ks: every K must be >= 1 (got {params.evaluate.recall_ks})")
    if problems:
        raise ConfigError("; ".join(problems))
    return params


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Load ``params.yaml`` (missing file -> defaults), apply ``key=value`` overrides and :func:`validate`.
    Every problem is one ``dotted.key: ... (got value)`` in a one-line :class:`ConfigError` with a hint."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    raw = _merge(raw, parse_overrides(overrides))
    hint = f" (fix it in {path or 'the params file'} or with -s KEY=VALUE; cafe/config.py documents every key)"
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("; ".join(_problem(e) for e in err.errors()) + hint) from None
    try:
        return validate(params)
    except ConfigError as err:
        raise ConfigError(f"{err}{hint}") from None


def save_params(params: Params, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
