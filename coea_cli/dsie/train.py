"""DSIE training: AdamW with warmup, early stopping on validation, checkpoints, resume, DDP.

One step = one global batch of training windows. Under `torchrun` (WORLD_SIZE > 1) every rank
builds the same global batch from (seed, epoch), takes every world-th window of it, and scales
its summed loss by world / (targets in the global batch); DDP's gradient averaging then gives
exactly the gradient of the global mean loss, so the loss trajectory matches one process
(up to floating-point summation order; dropout draws differ per rank, so compare with
dropout 0).

Checkpoints (one folder, replaced atomically after every epoch, rank 0 only):
model.safetensors (current weights), best.safetensors (best validation weights),
optimizer.safetensors (AdamW moments and the torch RNG states) and state.json (epoch, step,
scheduler, optimizer hyper-parameters, python/numpy RNG states, early-stopping state,
history, and a fingerprint of the data and model options that must match on --resume).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from coea_cli import console, store
from coea_cli.dist import all_sum, barrier
from coea_cli.dsie.data import Windows, batch_order, train_batch
from coea_cli.errors import BadInput
from coea_cli.options import DsieOptions


@dataclass
class TrainConfig:
    """Training settings; options-backed fields come from `from_options` (defaults defined
    once, in `DsieOptions`)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int
    patience: int
    eval_every: int
    group_weight: float
    cluster_weight: float
    sampled_above: int
    negatives: int
    seed: int
    metric: str  # validation metric for early stopping (see ranking_metrics)
    grad_clip: float = 1.0
    amp: bool = True

    @classmethod
    def from_options(cls, o: DsieOptions, seed: int) -> TrainConfig:
        return cls(
            epochs=o.epochs,
            batch_size=o.batch_size,
            lr=o.lr,
            weight_decay=o.weight_decay,
            warmup=o.warmup,
            patience=o.patience,
            eval_every=o.eval_every,
            group_weight=o.group_weight,
            cluster_weight=o.cluster_weight,
            sampled_above=o.sampled_softmax_above,
            negatives=o.negatives,
            seed=seed,
            metric=str(o.early_stop_metric),
        )


# ---------------------------------------------------------------- the trainer


class Trainer:
    """setup -> fit (train epochs, validate, checkpoint) -> best weights in `model`."""

    def __init__(
        self,
        model: nn.Module,
        windows: Windows,
        groups: np.ndarray,
        cfg: TrainConfig,
        evaluate: Callable[[nn.Module], dict],
        device: str = "cpu",
        ckpt_dir: Path | None = None,
        fingerprint: dict | None = None,
        rank: int = 0,
        world: int = 1,
        label: str = "dsie",
    ):
        self.model, self.windows, self.groups, self.cfg = model, windows, groups, cfg
        self.evaluate, self.device, self.ckpt_dir = evaluate, device, ckpt_dir
        self.fingerprint = fingerprint or {}
        self.rank, self.world, self.label = rank, world, label
        self.pad = model.cfg.n_items
        self.net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(device).index] if device.startswith("cuda") else None
            self.net = DistributedDataParallel(model, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98)
        )
        warm = max(1, cfg.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm)
        )
        self.epoch, self.step = 0, 0
        self.best: dict = {"metric": -1.0, "epoch": 0}
        self.bad_evals = 0
        self.history: list[dict] = []
        self.best_state: dict | None = None
        self.stopped = False
        self.train_seconds = 0.0
        self.sequences = 0
        self.step_losses: list[float] = []  # global mean loss of each step (this process)

    # ------------------------------------------------------------ one epoch

    def _negatives(self) -> torch.Tensor | None:
        n = self.model.cfg.n_items
        if n <= self.cfg.sampled_above:
            return None
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        return torch.randint(0, n, (self.cfg.negatives,), generator=g).to(self.device)

    def _tensors(self, batch: dict) -> dict:
        return {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}

    def _batches(self, epoch: int) -> list[np.ndarray]:
        lengths = self.windows.lengths()
        order = batch_order(lengths, self.cfg.batch_size, self.cfg.seed, epoch)
        return [b for b in order if len(b) >= self.world]

    def train_epoch(self, advance=None) -> dict:
        """One pass over the training windows. `advance(n, **fields)` is called after each
        batch (fit's overall progress bar); without it the epoch draws its own bar."""
        cfg, world = self.cfg, self.world
        lengths = self.windows.lengths()
        batches = self._batches(self.epoch)
        self.net.train()
        total = torch.zeros(4, dtype=torch.float64)
        amp = self.cfg.amp and self.device.startswith("cuda")
        start = time.perf_counter()
        done = 0
        if advance is not None:
            bar = nullcontext(advance)
        elif self.rank == 0:
            bar = console.progress(f"{self.label} epoch {self.epoch + 1}", len(batches), "batches")
        else:
            bar = nullcontext(lambda n=1, **fields: None)
        with bar as advance:
            for idx in batches:
                count = int((lengths[idx] - 1).sum())
                mine = idx[self.rank :: world]
                local = self._tensors(train_batch(self.windows, mine, self.groups, self.pad))
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    out = self.net(
                        local["items"], local["lengths"], local["groups"], local["targets"],
                        self._negatives(),
                    )  # fmt: skip
                loss_sum = (
                    out["next"]
                    + cfg.cluster_weight * out["cluster"]
                    + cfg.group_weight * out["group"]
                )
                loss = loss_sum.float() * (world / count)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                parts = [loss_sum, out["next"], out["group"]]
                part = torch.stack([p.detach().double().cpu() for p in parts])
                part = all_sum(part, world)
                total += torch.cat([part, torch.tensor([float(count)], dtype=torch.float64)])
                self.step_losses.append(float(part[0]) / count)
                done += len(idx)
                elapsed = time.perf_counter() - start
                advance(
                    epoch=f"{self.epoch + 1}/{cfg.epochs}",
                    loss=float(part[0]) / count,
                    seq_s=round(done / max(elapsed, 1e-9)),
                )
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        self.sequences += done
        n = float(total[3]) or 1.0
        return {
            "loss": float(total[0]) / n,
            "next_loss": float(total[1]) / n,
            "group_loss": float(total[2]) / n,
            "seconds": seconds,
            "sequences_per_s": done / seconds if seconds else 0.0,
            "steps": len(batches),
        }

    # ------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> dict:
        if resume:
            self.load_checkpoint()
        cfg = self.cfg
        # one bar over every epoch left (batches per epoch are the same in each), so the ETA
        # is the whole training's; early stopping ends it before the total
        total = sum(len(self._batches(e)) for e in range(self.epoch, cfg.epochs))
        bar = (
            console.progress(f"{self.label} training", total, "batches")
            if self.rank == 0
            else nullcontext(lambda n=1, **fields: None)
        )
        with bar as advance:
            while self.epoch < cfg.epochs and not self.stopped:
                stats = self.train_epoch(advance)
                self.epoch += 1
                row = {"epoch": self.epoch, **{k: round(v, 5) for k, v in stats.items()}}
                if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                    metrics = self.evaluate(self.model)
                    row["val"] = metrics
                    self._early_stop(metrics)
                self.history.append(row)
                if self.rank == 0:
                    console.log(self._epoch_line(row, stats))
                self.save_checkpoint()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return {
            "epochs": self.epoch,
            "steps": self.step,
            "best_epoch": self.best["epoch"],
            "best_val": self.best.get("val", {}),
            "stopped_early": self.stopped,
            "train_seconds": round(self.train_seconds, 2),
            "history": self.history,
        }

    def _epoch_line(self, row: dict, stats: dict) -> str:
        line = f"{self.label} epoch {self.epoch}: loss {row['loss']:.4f}, "
        line += f"{stats['sequences_per_s']:.0f} seq/s"
        val = row.get("val")
        if val:
            line += f", val HR@10 {val['hr@10']:.4f} NDCG@10 {val['ndcg@10']:.4f}"
            if self.cfg.metric not in ("hr@10", "ndcg@10"):
                line += f" {self.cfg.metric} {val[self.cfg.metric]:.4f}"
            if self.best["epoch"] == self.epoch:
                line += " (best)"
        return line

    def _early_stop(self, metrics: dict) -> None:
        value = metrics[self.cfg.metric]
        if value > self.best["metric"] + 1e-9:
            self.best = {"metric": value, "epoch": self.epoch, "val": metrics}
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.cfg.patience:
                self.stopped = True

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        if self.ckpt_dir is None:
            return
        if self.rank == 0:
            from safetensors.torch import save_file

            opt = self.optimizer.state_dict()
            tensors = {
                f"state.{i}.{name}": t.detach().cpu().contiguous().reshape(-1)
                if t.dim() == 0
                else t.detach().cpu().contiguous()
                for i, st in opt["state"].items()
                for name, t in st.items()
            }
            scalar = [
                f"state.{i}.{n}"
                for i, st in opt["state"].items()
                for n, t in st.items()
                if t.dim() == 0
            ]
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                for d, s in enumerate(torch.cuda.get_rng_state_all()):
                    tensors[f"rng.cuda.{d}"] = s
            np_state = np.random.get_state()
            state = {
                "epoch": self.epoch,
                "step": self.step,
                "best": self.best,
                "bad_evals": self.bad_evals,
                "stopped": self.stopped,
                "history": self.history,
                "train_seconds": self.train_seconds,
                "sequences": self.sequences,
                "scheduler": self.scheduler.state_dict(),
                "param_groups": opt["param_groups"],
                "scalar_state": scalar,
                "rng": {
                    "python": _listify(random.getstate()),
                    "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                },
                "fingerprint": self.fingerprint,
                "train": asdict(self.cfg),
            }
            with store.atomic_dir(self.ckpt_dir) as tmp:
                save_file(_cpu(self.model.state_dict()), str(tmp / "model.safetensors"))
                if self.best_state is not None:
                    save_file(_cpu(self.best_state), str(tmp / "best.safetensors"))
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                store.write_json(tmp / "state.json", state)
        barrier(self.world)

    def load_checkpoint(self) -> None:
        from safetensors.torch import load_file

        d = self.ckpt_dir
        if d is None or not (d / "state.json").exists():
            raise BadInput(f"--resume: no checkpoint in {d}; run without --resume first")
        state = store.read_json(d / "state.json")
        if state.get("fingerprint") != self.fingerprint:
            diff = sorted(
                k for k in set(state.get("fingerprint", {})) | set(self.fingerprint)
                if state.get("fingerprint", {}).get(k) != self.fingerprint.get(k)
            )  # fmt: skip
            raise BadInput(
                f"--resume: the checkpoint in {d} was made with other data or model options "
                f"({', '.join(diff)}); rerun without --resume"
            )
        dev = self.device
        self.model.load_state_dict(
            {k: v.to(dev) for k, v in load_file(str(d / "model.safetensors")).items()}
        )
        if (d / "best.safetensors").exists():
            self.best_state = {
                k: v.to(dev) for k, v in load_file(str(d / "best.safetensors")).items()
            }
        tensors = load_file(str(d / "optimizer.safetensors"))
        scalar = set(state["scalar_state"])
        opt_state: dict = {}
        for key, t in tensors.items():
            if not key.startswith("state."):
                continue
            _, i, name = key.split(".", 2)
            t = t.reshape(()) if key in scalar else t
            opt_state.setdefault(int(i), {})[name] = t if name == "step" else t.to(dev)
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        random.setstate(_tuplify(state["rng"]["python"]))
        np_state = state["rng"]["numpy"]
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.bad_evals = state["best"], state["bad_evals"]
        # an early-stopped run continues only when a larger --patience allows it
        self.stopped = state["stopped"] and self.bad_evals >= self.cfg.patience
        self.history = state["history"]
        self.train_seconds, self.sequences = state["train_seconds"], state["sequences"]
        if self.rank == 0:
            console.log(f"resumed from {d} after epoch {self.epoch} (step {self.step})")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on Linear weights only (not on embeddings, norms and biases)."""
    decay, plain = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, tuple | list) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def fingerprint(**parts) -> dict:
    """JSON-comparable description of what a checkpoint must match."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))
