"""The training loop: one readable loop for CAFe fine-tuning and for language-only pretraining.

Per step: the language instruction with its answer gives L_lm; the image and text embedding instructions
give embeddings that are gathered across ranks with gradient for L_con (``cafe.training.step``); each
weighted term runs its forward and backward; the strategy (``cafe.training.strategy``, chosen once by
``train.strategy``) reduces, clips and applies the gradients:

- ``ddp``: gradients averaged by hand (``cafe.distributed.average_gradients``) rather than by wrapping the
  model in DistributedDataParallel: a CAFe step runs several forwards through sub-modules per backward and,
  with gradient caching, several backwards per step, which DDP's hooks do not follow; each term is clipped
  on its own;
- ``deepspeed``: the DeepSpeed engine (ZeRO 0/2/3, offload, bf16) with one accumulation boundary per step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cafe.config import Params, TrainConfig, save_params
from cafe.data.samples import GlobalBatchSampler, Sample, SampleDataset, collate, steps_for_epochs
from cafe.distributed import DistEnv, barrier
from cafe.models import load_adapter
from cafe.processes import short_socket_dir
from cafe.storage import localize
from cafe.models.adapter import VLMAdapter
from cafe.objective import combine
from cafe.training import checkpoint as ckpt
from cafe.training.step import loss_terms
from cafe.training.strategy import Strategy, build_strategy
from cafe.training.validation import val_loader, validation_loss

logger = logging.getLogger(__name__)


def inject_fault(step: int, dist: DistEnv) -> None:
    """Test hook for fault tolerance: with ``CAFE_FAULT_AT_STEP=N`` (and ``CAFE_FAULT_RANK``, default 1) that
    rank kills itself with SIGKILL right after step N, as a lost node would, in the job's first start only
    (``dist.attempt`` 0), so the restarted job goes on. Unset in normal runs: does nothing."""
    at = os.environ.get("CAFE_FAULT_AT_STEP")
    if at and int(at) == step and dist.rank == int(os.environ.get("CAFE_FAULT_RANK", "1")) and dist.attempt == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Fits a model on samples, writing checkpoints and a JSONL step log under ``cfg.output``, and with
    ``train.eval_every`` the validation loss (in the step log and in ``val_loss.json``, a DVC plot)."""

    def __init__(self, cfg: TrainConfig, params: Params, dist: DistEnv, progress: bool = True):
        self.cfg, self.params, self.dist = cfg, params, dist
        self.out = Path(cfg.output)
        self.ckpt_root = self.out / "checkpoints"
        self.log_path = self.out / "train_log.jsonl"
        self.plot_path = self.out / "val_loss.json"
        self.progress = progress and dist.is_main
        # the durable copy of the checkpoints; the local folder is then a cache a new pod may not have
        self.store = ckpt.StoreCheckpoints(cfg.checkpoint_store) if cfg.checkpoint_store else None

    def _fetch_from_store(self) -> None:
        """Bring the store's newest complete checkpoint into the local folder when it is newer (or the local
        folder is empty, as on a replaced pod): one download per node (local rank 0), then everyone reads it."""
        if self.store is not None and self.dist.local_rank == 0:
            remote = self.store.latest_step()
            local = ckpt.latest_checkpoint(self.ckpt_root)
            if remote is not None and (local is None or ckpt.step_of(local) < remote):
                node = os.environ.get("GROUP_RANK", "0")
                self.store.fetch(remote, self.ckpt_root, tag=f"{socket.gethostname()}-{node}")
        barrier()

    # ----------------------------------------------------------------- state
    def _load(self, init: str | Path | Callable[[], VLMAdapter], resume: bool) -> tuple[VLMAdapter, Path | None]:
        if resume:
            self._fetch_from_store()
        latest = ckpt.latest_checkpoint(self.ckpt_root) if resume else None
        if latest is not None:
            ckpt.check_weights(latest)
            return load_adapter(latest, self.params.prompts, self.params.model), latest
        if callable(init):
            return init(), None
        if str(init).startswith(("s3://", "minio://")):  # a base model in the object store: one copy per node
            local = self.out / ".base-model"
            if self.dist.local_rank == 0:
                localize(init, local)
            barrier()
            init = local
        return load_adapter(init, self.params.prompts, self.params.model), None

    def _save(self, adapter, strategy: Strategy, step: int) -> Path:
        staged = ckpt.staging_dir(self.ckpt_root, step)
        if self.dist.local_rank == 0:  # one per node: nodes need not share a file system
            staged.mkdir(parents=True, exist_ok=True)
        barrier()
        torch.save(ckpt.rng_state(), staged / f"rng_state_{self.dist.rank}.pt")
        strategy.save(staged)
        with strategy.full_weights():
            if self.dist.is_main:
                adapter.save_pretrained(staged)
        if self.dist.is_main:
            ckpt.write_trainer_state(staged, {"step": step, "strategy": strategy.name, "world_size": self.dist.world_size,
                                              "seed": self.cfg.seed, "global_batch": self.cfg.batch_size * self.dist.world_size})
            save_params(self.params, staged / "params.yaml")
        barrier()
        if self.store is not None and self.dist.local_rank == 0:
            self.store.upload(staged, step)  # each node what it wrote (a shared folder is uploaded per node)
        barrier()
        final = staged
        if self.dist.is_main:
            final = ckpt.finalize(self.ckpt_root, step, self.cfg.keep_last)
            if self.store is not None:
                self.store.mark_complete(step, self.cfg.keep_last)
        barrier()
        if self.store is not None and not self.dist.is_main and self.dist.local_rank == 0 and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)  # a node with its own disk: its part is in the store
        return final

    def _restore(self, path: Path, strategy: Strategy) -> int:
        state = ckpt.read_trainer_state(path)
        global_batch = self.cfg.batch_size * self.dist.world_size
        if (state["global_batch"], state["seed"]) != (global_batch, self.cfg.seed):
            raise ValueError(
                f"{path} was trained with global batch {state['global_batch']} and seed {state['seed']}; this run has "
                f"{global_batch} and {self.cfg.seed}. Keep batch_size x processes and the seed, or start a new output.")
        if state.get("strategy", "ddp") != strategy.name:
            raise ValueError(f"{path} was written by train.strategy={state.get('strategy')}; this run uses "
                             f"{strategy.name}. Keep the strategy, or start a new output.")
        strategy.load(path)
        rng_file = path / f"rng_state_{self.dist.rank}.pt"
        if rng_file.exists():  # absent when resuming with more ranks than were saved
            ckpt.set_rng_state(ckpt.load_rng_state(rng_file))
        if self.dist.is_main and self.log_path.exists():
            kept = [line for line in self.log_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= state["step"]]
            self.log_path.write_text("".join(line + "\n" for line in kept))
        return int(state["step"])

    # ----------------------------------------------------------------- logging
    def _val_loader(self, val: Dataset | list[Sample] | None):
        """The validation batches when ``train.eval_every`` is on and a split is given, else None (said once)."""
        if not self.cfg.eval_every:
            return None
        if val is None:
            logger.warning("train.eval_every=%d but no validation data was given: no validation loss",
                           self.cfg.eval_every)
            return None
        loader = val_loader(SampleDataset(val) if isinstance(val, list) else val, self.cfg, self.dist)
        if loader is None:
            logger.warning("the validation split has %d samples, fewer than the %d processes: no validation loss",
                        len(val), self.dist.world_size)
        return loader

    def _log(self, record: dict, log_file, bar, shown: dict[str, str], show: bool) -> dict[str, str]:
        """Everything a step reports, in one place: the JSONL step log, the progress bar, and on a step with
        a validation loss the DVC plot file ``val_loss.json`` (all validation records so far, with the mean
        training loss since the previous one). Returns the progress bar's fields."""
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if "val_loss" in record:
                self._write_plot()
        bar.update(1)
        if "val_loss" in record:
            shown = shown | {"val": f"{record['val_loss']:.3f}"}
        if show or "val_loss" in record:
            bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in record.items() if k.startswith("loss_")}
                            | {"samples/s": f"{record['samples_per_s']:.0f}"} | shown)
        return shown

    def _write_plot(self) -> None:
        rows, train = [], []
        for line in self.log_path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            train.append(r["loss"])
            if "val_loss" in r:
                rows.append({"step": r["step"], "train_loss": sum(train) / len(train),
                             **{k: v for k, v in r.items() if k.startswith("val_loss")}})
                train = []
        staged = self.plot_path.with_suffix(".json.tmp")
        staged.write_text(json.dumps(rows, indent=1))
        staged.replace(self.plot_path)

    # ----------------------------------------------------------------- loop
    def fit(self, data: Dataset | list[Sample], init: str | Path | Callable[[], VLMAdapter], resume: bool = True,
            stop_after: int | None = None, val: Dataset | list[Sample] | None = None) -> Path:
        """Train and return the directory of the final model (``<output>/model``).

        ``data`` is a map-style dataset of ``(Sample, PIL image)`` items (a list of samples is wrapped in
        :class:`SampleDataset`); the global batch sampler decides which indices each rank reads at each step.

        ``val`` (the same kind of dataset, e.g. ``pairs_dataset(params, "val")``) gives the validation loss
        every ``train.eval_every`` steps and after the last step (``cafe.training.validation``).

        ``stop_after`` ends the run early after that many steps (with a checkpoint), as an interruption would.
        """
        cfg, dist = self.cfg, self.dist
        dataset = SampleDataset(data) if isinstance(data, list) else data
        seed_everything(cfg.seed + dist.rank)
        adapter, resumed_from = self._load(init, resume)
        model = adapter.model.to(dist.device)
        model.train()

        global_batch = cfg.batch_size * dist.world_size
        total = cfg.max_steps or steps_for_epochs(len(dataset), global_batch, cfg.epochs)
        strategy = build_strategy(model, cfg, dist, total)
        step = self._restore(resumed_from, strategy) if resumed_from else 0
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_params(self.params, self.out / "params.yaml")

        sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, dist.world_size, dist.rank, cfg.seed,
                                     start_step=step, total_steps=total)
        if cfg.num_workers:
            short_socket_dir()
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                            num_workers=cfg.num_workers, persistent_workers=False)
        validate = self._val_loader(val)
        bar = tqdm(total=total, initial=step, desc="train", disable=not self.progress, dynamic_ncols=True,
                   mininterval=1.0)
        log = self.log_path.open("a") if dist.is_main else None
        last = time.perf_counter()
        stop_at = min(total, step + stop_after) if stop_after else total
        shown: dict[str, str] = {}
        try:
            for batch in loader:
                cut = adapter.truncated_texts
                losses, norms = strategy.step(loss_terms(adapter, batch, cfg, strategy.backward))
                weighted = combine(losses, cfg.objective)
                step += 1

                now = time.perf_counter()
                rate = global_batch / max(now - last, 1e-9)
                last = now
                record = {"step": step, "loss": float(sum(weighted.values())),
                          **{f"loss_{k}": float(v) for k, v in losses.items()},
                          **{f"grad_norm_{k}": v for k, v in norms.items()},
                          "lr": strategy.lr, "samples_per_s": rate,
                          "truncated_texts": adapter.truncated_texts - cut,
                          "attempt": dist.attempt}
                if validate is not None and (step % cfg.eval_every == 0 or step == total):
                    record |= validation_loss(adapter, validate, cfg, getattr(strategy, "autocast", None))
                    record["val_seconds"] = time.perf_counter() - now
                    last = time.perf_counter()  # the next step's rate leaves the validation out
                shown = self._log(record, log, bar, shown, show=step % max(1, cfg.log_every) == 0 or step == total)
                inject_fault(step, dist)
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"step {step}: loss is {record['loss']}; lower the learning rate")
                if step >= stop_at:
                    break
                if cfg.save_every and step % cfg.save_every == 0:
                    self._save(adapter, strategy, step)
        finally:
            bar.close()
            if log is not None:
                log.close()

        self._save(adapter, strategy, step)
        final = self.out / "model"
        if step >= total:
            with strategy.full_weights():
                if dist.is_main:
                    adapter.save_pretrained(self.out / ".tmp-model")
        if step >= total and dist.is_main:
            staged = self.out / ".tmp-model"
            save_params(self.params, staged / "params.yaml")
            (staged / "train_summary.json").write_text(json.dumps(
                {"steps": step, "global_batch": global_batch, "samples": len(dataset),
                 "resumed_from": str(resumed_from) if resumed_from else None}, indent=1))
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)
        barrier()
        return final
