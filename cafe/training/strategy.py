"""How a step's gradients are reduced, clipped and applied: hand-averaged (DDP-style) or the DeepSpeed engine.

The training loop is the same for both; it picks a strategy once (:func:`build_strategy`) and per step calls
``strategy.step(loss_terms(adapter, batch, cfg, strategy.backward))``. A strategy owns the optimizer and the
schedule and saves/loads their state into a checkpoint directory.

- :class:`DDPStrategy` (``train.strategy: ddp``): every term back-propagates with ``tensor.backward()``;
  gradients are averaged across ranks by hand after each term and clipped per term (``optim.clip_mode``),
  then one AdamW step.
- :class:`DeepSpeedStrategy` (``train.strategy: deepspeed``): ``engine.backward`` for every term, and the
  engine's ``step()`` is the one accumulation boundary of the step (``"managed_gradient_accumulation":
  false``): ZeRO-2/3 reduce-scatter each backward's gradient into the partitions and the step finalises
  them, ZeRO-0/1 all-reduce at the step. So gradient caching's many backwards per step stay exact, with no
  ``scale_wrt_gas`` division and no lost chunk (the traps are listed in ``docs/distributed.md``). The engine
  clips the **total** gradient (``gradient_clipping``) after the reduction; per-loss clipping cannot be had
  there, since under ZeRO-2/3 no rank holds a whole per-term gradient.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import socket
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as tdist

from cafe.config import TrainConfig
from cafe.distributed import DistEnv, average_gradients
from cafe.training.checkpoint import safe_load
from cafe.training.optim import LossBalance, backward_and_clip, build_optimizer, build_scheduler, param_groups
from cafe.training.step import Term, plain_backward

log = logging.getLogger(__name__)


class DDPStrategy:
    """Hand-averaged gradients, per-term clipping, torch AdamW with the vision / LLM learning rates."""

    name = "ddp"

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, dist: DistEnv, total_steps: int):
        self.cfg, self.dist = cfg, dist
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, total_steps)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if dist.device.type == "cuda" and cfg.precision == "bf16" else nullcontext())
        self.balance = LossBalance(cfg.optim)  # optim.clip_mode balanced: its factors, kept across steps

    backward = staticmethod(plain_backward)

    def step(self, terms: dict[str, Term]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        with self.autocast:
            losses, norms = backward_and_clip(terms, self.params, self.cfg.optim, average_gradients, self.balance)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses, norms

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[-1]

    @contextmanager
    def full_weights(self) -> Iterator[None]:
        """The whole model is on every rank already."""
        yield

    def save(self, directory: Path) -> None:
        if self.dist.is_main:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        # checkpoints written before the strategies existed kept these in trainer_state.pt
        path = directory / "optimizer.pt" if (directory / "optimizer.pt").is_file() else directory / "trainer_state.pt"
        state = safe_load(path, map_location=self.dist.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _fill(section: dict, key: str, value) -> None:
    if section.get(key, "auto") == "auto":
        section[key] = value


def deepspeed_config(path: str | Path, cfg: TrainConfig, dist: DistEnv) -> dict:
    """The JSON file with the training config filled in where it says ``"auto"`` (or leaves a key out):
    batch sizes, clipping, bf16 (on when ``train.precision`` is bf16 on a GPU; CPU runs compute in fp32),
    optimizer hyper-parameters. One accumulation boundary per step is enforced (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.deepspeed_config {path}: no such file (the repository has configs/deepspeed/)")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"train.deepspeed_config {path}: not valid JSON ({err})") from None
    if ds.get("gradient_accumulation_steps", 1) not in (1, "auto") or ds.get("managed_gradient_accumulation", False):
        raise ValueError(f"{path}: gradient_accumulation_steps / managed_gradient_accumulation are set by cafe "
                         "(one accumulation boundary per step, any number of backwards in it); remove them")
    ds["gradient_accumulation_steps"] = 1
    ds["managed_gradient_accumulation"] = False
    _fill(ds, "train_micro_batch_size_per_gpu", cfg.batch_size)
    _fill(ds, "train_batch_size", cfg.batch_size * dist.world_size)
    _fill(ds, "gradient_clipping", cfg.optim.clip_norm if cfg.optim.clip_mode != "none" else 0.0)
    bf16 = ds.setdefault("bf16", {})
    _fill(bf16, "enabled", cfg.precision == "bf16" and dist.device.type == "cuda")
    ds.setdefault("zero_allow_untested_optimizer", True)  # the client AdamW with two learning rates
    ds.setdefault("steps_per_print", 1 << 30)
    if "optimizer" in ds:
        p = ds["optimizer"].setdefault("params", {})
        _fill(p, "lr", cfg.optim.lr)
        _fill(p, "betas", list(cfg.optim.betas))
        _fill(p, "weight_decay", cfg.optim.weight_decay)
    return ds


def _ensure_process_group(dist: DistEnv) -> None:
    """DeepSpeed needs a process group and torchrun's variables even for one process; a plain run gets a
    private group on 127.0.0.1."""
    for key, value in (("RANK", dist.rank), ("LOCAL_RANK", dist.local_rank), ("WORLD_SIZE", dist.world_size)):
        os.environ.setdefault(key, str(value))
    if tdist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def build_deepspeed_ops() -> None:
    """Compile (or load) DeepSpeed's JIT-built shared-memory comm extension, one process at a time.

    Every rank that starts the engine loads it, and with an empty extension cache (``TORCH_EXTENSIONS_DIR``,
    default ``~/.cache/torch_extensions``) ranks that compile it at the same moment have aborted (SIGABRT,
    "terminate called without an active exception"). Under an exclusive lock in that cache folder the first
    process builds it and the others (other ranks on the node, other runs) wait, then load the finished
    library. Call it before spawning ranks to build once up front; :class:`DeepSpeedStrategy` calls it too,
    so torchrun runs are safe."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import get_default_build_root

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed does not use it on this accelerator / platform
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())  # as torch resolves it
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "cafe-deepspeed-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            builder.load()  # DeepSpeed keeps the loaded module; its own load during initialize reuses it
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class DeepSpeedStrategy:
    """The DeepSpeed engine (ZeRO 0-3, optional CPU offload, bf16) around the same model and loss terms.

    With no ``"optimizer"`` section in the JSON the engine wraps the same torch AdamW as DDP (two learning
    rates); with one (needed for CPU offload: DeepSpeed's CPU Adam) it builds that optimizer over the same
    parameter groups. The schedule is the same warm-up + cosine, stepped by the engine."""

    name = "deepspeed"
    TAG = "deepspeed"  # checkpoint sub-directory

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, dist: DistEnv, total_steps: int,
                 config: dict | None = None,
                 optimizer: Callable[[list[dict]], torch.optim.Optimizer] | None = None):
        """``config``: the filled-in DeepSpeed config (default: from ``train.deepspeed_config``);
        ``optimizer``: parameter groups -> optimizer, instead of AdamW or the JSON's ``"optimizer"``."""
        import deepspeed

        self.cfg, self.dist = cfg, dist
        self.config = config if config is not None else deepspeed_config(cfg.deepspeed_config, cfg, dist)
        _ensure_process_group(dist)
        build_deepspeed_ops()
        groups = param_groups(model, cfg.optim)
        client = optimizer or (None if "optimizer" in self.config else (lambda _: build_optimizer(model, cfg.optim)))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=client, config=copy.deepcopy(self.config),
            lr_scheduler=lambda opt: build_scheduler(opt, cfg.optim, total_steps), dist_init_required=False)
        self.stage = self.engine.zero_optimization_stage()
        _safe_checkpoint_engine(self.engine)
        if cfg.optim.clip_mode in ("per_loss", "balanced") and dist.is_main:
            log.info("DeepSpeed clips the total gradient (gradient_clipping=%s), not each loss term",
                     self.config["gradient_clipping"])

    def backward(self, tensor: torch.Tensor) -> None:
        self.engine.backward(tensor, scale_wrt_gas=False)
        # What engine.forward() does before each forward, which our forwards (through the adapter's sub-modules,
        # not the engine) skip: without it ZeRO-3 keeps micro_step_id at 0 and every backward *overwrites*
        # the gradient partitions instead of adding to them, silently keeping only the last chunk's gradient.
        clear = getattr(self.engine.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()

    def step(self, terms: dict[str, Term]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        losses = {name: run() for name, run in terms.items()}
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return losses, ({"total": float(norm)} if norm is not None else {})

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[-1]

    @contextmanager
    def full_weights(self) -> Iterator[None]:
        """Under ZeRO-3 every rank holds a slice of each parameter: gather them for saving (collective)."""
        if self.stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
            yield

    def save(self, directory: Path) -> None:
        """Every rank writes its optimizer / parameter partitions (collective)."""
        self.engine.save_checkpoint(str(directory), tag=self.TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        """Every rank reads its partitions, through the safe checkpoint engine (nothing there runs code)."""
        path, _ = self.engine.load_checkpoint(str(directory), tag=self.TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed state under {self.TAG}/ (saved by another strategy?)")


def deepspeed_state_classes() -> tuple:
    """The plain data classes DeepSpeed's own checkpoint files hold (ZeRO 0-3): allowed by the safe load."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address


def _safe_checkpoint_engine(engine) -> None:
    """Swap the engine's checkpoint engine (whose ``load`` is ``torch.load(weights_only=False)``) for one that
    loads with ``weights_only=True`` and DeepSpeed's data classes only; refuse configurations that read
    checkpoint files some other way (universal checkpoints, other checkpoint writers)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if engine.load_universal_checkpoint():
        raise ValueError("train.deepspeed_config: checkpoint.load_universal is not supported (DeepSpeed reads "
                         "universal checkpoints with pickle); remove it")
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise ValueError(f"train.deepspeed_config: checkpoint engine {type(engine.checkpoint_engine).__name__} "
                         "loads with pickle; remove checkpoint.writer (cafe uses DeepSpeed's torch engine)")
    allowed = deepspeed_state_classes()

    class SafeTorchCheckpointEngine(type(engine.checkpoint_engine)):
        def load(self, path: str, map_location=None):
            return safe_load(path, map_location=map_location, allowed=allowed)

    engine.checkpoint_engine.__class__ = SafeTorchCheckpointEngine


Strategy = DDPStrategy | DeepSpeedStrategy


def build_strategy(model: torch.nn.Module, cfg: TrainConfig, dist: DistEnv, total_steps: int) -> Strategy:
    """``train.strategy``: "ddp" or "deepspeed" (with ``train.deepspeed_config``)."""
    if cfg.strategy == "deepspeed":
        if not cfg.deepspeed_config:
            raise ValueError("train.strategy is deepspeed: set train.deepspeed_config (e.g. configs/deepspeed/zero2.json)")
        return DeepSpeedStrategy(model, cfg, dist, total_steps)
    return DDPStrategy(model, cfg, dist, total_steps)

