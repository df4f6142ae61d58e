"""The training runner: ``train(cfg)`` runs the iteration schedule, single-process or DDP under torchrun.

Recipe of the DRConv paper (section 4.2): SGD momentum 0.9, lr 0.1 divided by 10 at 252k, 364k and
406k iterations, 420k iterations, global batch 512, AM-Softmax. One step: lr from
:func:`~facerec.train.schedule.lr_at`; autocast (``train.amp``) over backbone and head (the head
computes its margins in fp32 itself); ``GradScaler(enabled=amp == "fp16")``; optional gradient-norm
clipping; a non-finite loss stops the run before the update is applied. Checkpoints, verification
and logging happen at step boundaries on rank 0.

Step-exact resume: the data order is a function of (seed, step) (``ResumableBatchSampler``), the
data iterator is re-created at every checkpoint step with a generator seeded by the step (so
DataLoader workers restart from a known seed), and model, head, optimizer, scaler and every rank's
RNG states are saved. A run killed at any time and resumed from its newest checkpoint therefore
reproduces the uninterrupted run bit for bit on CPU.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from facerec._quote import quote
from facerec.config import Config, config_from_dict, config_to_dict, save_config
from facerec.train import builders
from facerec.train.checkpoint import (
    FORMAT_VERSION, capture_rng_state, find_resume_checkpoint, load_checkpoint, restore_rng_state,
    save_checkpoint,
)
from facerec.train.distributed import (
    DistInfo, ResumableBatchSampler, all_gather_objects, barrier, broadcast_object,
    cleanup_distributed, init_distributed,
)
from facerec.train.monitor import RunMonitor, ThroughputMeter
from facerec.train.schedule import base_lr, lr_at

__all__ = ["NonFiniteLossError", "train"]

log = logging.getLogger(__name__)

_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the weights were not updated with it."""


class _Net(nn.Module):
    """Backbone + margin head as one module, so DDP reduces the gradients of both."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), labels (B,) -> logits (B, num_classes) fp32."""
        return self.head(self.backbone(images), labels)


class _StopFlag:
    """SIGTERM / SIGINT set a flag that the loop reads at the next step boundary."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the end of this step",
                    signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


def _device(cfg: Config, info: DistInfo) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but torch.cuda.is_available() is False")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("options", "synthetic_options"):
            out += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {quote(a)} -> {quote(b)}")
    return out


def _resolve_resume(cfg: Config, out_dir: Path, info: DistInfo) -> Path | None:
    """Rank 0 picks the checkpoint to resume from; every rank gets its path."""
    choice = None
    if info.is_main and cfg.train.resume:
        if cfg.train.resume == "auto":
            found = find_resume_checkpoint(out_dir)
            if found is None:
                log.info("resume=auto: no valid checkpoint in %s; starting from step 0", out_dir)
            else:
                choice = str(found[0])
        else:
            load_checkpoint(cfg.train.resume)  # fail early and clearly on a bad explicit path
            choice = cfg.train.resume
    choice = broadcast_object(choice)
    return Path(choice) if choice else None


class _Run:
    """State of one training run; :meth:`run` is the step loop."""

    def __init__(self, cfg: Config, info: DistInfo, device: torch.device, evaluators=None) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.evaluators = dict(evaluators or {})
        self.out_dir = cfg.out_dir
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.stop = _StopFlag()

    def build(self) -> None:
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            builders.prepare_data(cfg)
        barrier()
        self.dataset = builders.build_train_dataset(cfg)
        self.backbone = builders.build_backbone(cfg.model).to(self.device)
        self.head = builders.build_head(cfg.head, cfg.model.embedding_size,
                                        self.dataset.num_classes).to(self.device)
        self.optimizer = builders.build_optimizer(cfg.optim, self.backbone, self.head)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.sampler = ResumableBatchSampler(len(self.dataset), cfg.data.batch_size, rank=info.rank,
                                             world_size=info.world_size, seed=cfg.train.seed)
        self.eval_sets = builders.load_eval_sets(cfg) if info.is_main else []
        net: nn.Module = _Net(self.backbone, self.head)
        if info.is_distributed:
            if cfg.train.sync_bn:
                if self.device.type != "cuda":
                    raise ValueError("train.sync_bn=true needs CUDA devices (torch's SyncBatchNorm has no "
                                     f"CPU kernel); this run is on {self.device}")
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
                self.backbone, self.head = net.backbone, net.head
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        self.net = net

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        stored = state["config"]
        now = config_to_dict(self.cfg)
        for section in ("model", "head"):
            if stored.get(section) != now[section]:
                raise ValueError(f"cannot resume from {path}: its {section} section differs: "
                                 + "; ".join(_config_diff(stored.get(section, {}), now[section], f"{section}.")))
        for line in _config_diff(stored, now):
            if not line.startswith(("train.resume", "train.out_dir")):
                log.warning("config changed since the checkpoint: %s", line)
        config_from_dict(stored)  # the stored config must still be a valid config
        self.backbone.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rngs = state.get("rng", [])
        if len(rngs) == self.info.world_size:
            restore_rng_state(rngs[self.info.rank])
        else:
            log.warning("checkpoint holds RNG states of %d ranks, this run has %d: reseeding",
                        len(rngs), self.info.world_size)
            _seed_everything(self.cfg.train.seed + 1_000 * self.step + self.info.rank)
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> None:
        rngs = all_gather_objects(capture_rng_state())
        if self.info.is_main:
            epoch, batch = self.sampler.position_at(self.step)
            state = {
                "format_version": FORMAT_VERSION, "step": self.step,
                "model": self.backbone.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "sampler": {"epoch": epoch, "batch": batch, "global_batch": self.cfg.data.batch_size},
                "rng": rngs, "config": config_to_dict(self.cfg),
                "metrics": dict(self.last_metrics),
            }
            self.last_checkpoint = save_checkpoint(state, self.out_dir, self.step,
                                                   self.cfg.checkpoint.keep)
            log.info("checkpoint %s", self.last_checkpoint)
        barrier()

    def evaluate(self) -> dict[str, float]:
        """Verification on rank 0 (others wait at the barrier); returns the flat metrics."""
        metrics: dict[str, float] = {}
        if self.info.is_main and (self.eval_sets or self.evaluators):
            from facerec.eval.features import ModelFeatureExtractor
            from facerec.eval.verification import verify

            was_training = self.backbone.training
            self.backbone.eval()
            extractor = ModelFeatureExtractor(self.backbone, self.device, tuple(self.cfg.model.input_size))
            with torch.no_grad():
                for name, images, issame in self.eval_sets:
                    result = verify(extractor, images, issame, batch_size=self.cfg.eval.batch_size,
                                    nfolds=self.cfg.eval.nfolds)
                    metrics.update(result.as_dict(f"{name}_"))
                    log.info("step %d  %s: acc %.4f +- %.4f (no flip %.4f +- %.4f), threshold %.2f",
                             self.step, name, result.flip.accuracy, result.flip.std,
                             result.noflip.accuracy, result.noflip.std, result.flip.threshold)
                for name, evaluator in self.evaluators.items():
                    scores = {f"{name}_{k}": float(v) for k, v in evaluator(self.backbone).items()}
                    metrics.update(scores)
                    log.info("step %d  %s: %s", self.step, name, "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            self.backbone.train(was_training)
            self.monitor.scalars(self.step, metrics)
            self.last_metrics = metrics
        barrier()
        return metrics

    def _loader_iter(self):
        epoch, batch = self.sampler.position_at(self.step)
        self.sampler.set_position(epoch, batch)
        gen = torch.Generator().manual_seed(
            (self.cfg.train.seed * 1_000_003 + self.step) * 4_099 + self.info.rank)
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.cfg.data.num_workers,
                            pin_memory=self.device.type == "cuda", generator=gen)
        return iter(loader)

    def _reduce(self, loss: torch.Tensor) -> tuple[float, bool]:
        """Mean loss over ranks and whether any rank was asked to stop (one collective)."""
        if not self.info.is_distributed:
            return float(loss.detach()), bool(self.stop.signum)
        packed = torch.stack([loss.detach().float(),
                              torch.tensor(float(bool(self.stop.signum)), device=loss.device)])
        dist.all_reduce(packed)
        loss_sum, stops = packed.tolist()
        return loss_sum / self.info.world_size, stops > 0

    def run(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        total = cfg.schedule.total_steps
        amp_dtype = _AMP_DTYPES.get(cfg.train.amp)
        self.net.train()
        self.monitor.start_bar(self.step)
        meter, window_loss, window_steps = ThroughputMeter(), 0.0, 0
        interrupted = False
        data_iter = None
        self.stop.install()
        try:
            log.info("training %s on %s: %d rank(s), global batch %d, peak lr %.4g (optim.lr_batch %d), steps %d -> "
                     "%d, out %s", cfg.model.name, self.device, info.world_size, cfg.data.batch_size,
                     base_lr(cfg.optim, cfg.data.batch_size), cfg.optim.lr_batch, self.step, total, self.out_dir)
            while self.step < total:
                if data_iter is None:
                    data_iter = self._loader_iter()
                try:
                    images, labels = next(data_iter)
                except StopIteration:  # end of an epoch
                    data_iter = None
                    continue
                except RuntimeError:
                    if not self.stop.signum:  # a DataLoader worker died without a stop request
                        raise
                    interrupted = True  # Ctrl-C also reached the workers
                    break
                lr = lr_at(self.step, cfg.schedule, cfg.optim, cfg.data.batch_size)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True).long()
                with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    logits = self.net(images, labels)
                loss = F.cross_entropy(logits.float(), labels)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                loss_value, stop = self._reduce(loss)
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"loss is {loss_value} at step {self.step} (lr {lr:.4g}, amp {cfg.train.amp}); "
                        f"stopping without applying this update. Last good checkpoint: "
                        f"{self.last_checkpoint or 'none yet'}. Usual causes: lr too high for the batch, "
                        f"fp16 overflow (try --set train.amp=bf16 or none), corrupt images or labels.")
                if cfg.optim.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                meter.add(cfg.data.batch_size)
                window_loss, window_steps = window_loss + loss_value, window_steps + 1
                self.monitor.step(self.step, loss_value, lr, meter.samples_per_s)
                if self.step % cfg.train.log_every == 0 or self.step == total:
                    sps, steps_s = meter.samples_per_s, meter.steps_per_s
                    log.info("step %d/%d  loss %.4f  lr %.4g  %.1f samples/s  ETA %s", self.step, total,
                             window_loss / window_steps, lr, sps, self.monitor.eta(self.step, steps_s))
                    self.monitor.scalars(self.step, {"loss": window_loss / window_steps, "lr": lr,
                                                     "samples_per_s": sps})
                    window_loss, window_steps = 0.0, 0
                    meter.restart()
                if stop:
                    interrupted = True
                    break
                paused = False
                if self.step % cfg.checkpoint.every == 0 or self.step == total:
                    self.save()
                    data_iter, paused = None, True  # restart the loader from a step-derived seed
                if self.step == total or (cfg.eval.every and self.step % cfg.eval.every == 0):
                    self.evaluate()
                    paused = True
                if paused:
                    meter.restart()
            if interrupted:
                self.save()
                log.warning("stopped at step %d by a signal; resume with --resume auto", self.step)
        finally:
            self.stop.restore()
        return {"step": self.step, "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "metrics": dict(self.last_metrics), "out_dir": str(self.out_dir),
                "interrupted": interrupted, "signal": self.stop.signum,
                "backbone": self.backbone.eval()}


def train(cfg: Config, evaluators: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run described by ``cfg``.

    Single process under plain ``python``; DDP when launched by ``torchrun`` (one process per GPU, or
    gloo on CPU), with ``data.batch_size`` the global batch (each rank takes ``batch_size / G``).
    ``evaluators``: optional ``{name: fn(backbone) -> {metric: float}}`` called on rank 0 (backbone in eval
    mode, no grad) beside the ``eval.sets`` at every evaluation step; the scores are logged as
    ``<name>_<metric>`` (metrics.jsonl, TensorBoard) and returned in ``metrics``.

    Returns:
        ``{"step": final step, "checkpoint": path of the last checkpoint, "metrics": last verification
        scalars (``<set>_acc``, ``<set>_acc_std``, ``<set>_acc_noflip``, ...), "out_dir": run folder,
        "interrupted": stopped by SIGTERM/SIGINT, "signal": its number or 0, "backbone": the trained
        backbone (eval mode)}``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        ValueError: bad configuration, unreadable explicit resume checkpoint, incompatible resume.
    """
    info_before = dist.is_available() and dist.is_initialized()
    info = DistInfo.from_env()
    device = _device(cfg, info)
    info = init_distributed(device.type)
    try:
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        _seed_everything(cfg.train.seed + info.rank)
        run = _Run(cfg, info, device, evaluators)
        run.monitor = RunMonitor(cfg.out_dir, is_main=info.is_main, total_steps=cfg.schedule.total_steps,
                                 tensorboard=cfg.train.tensorboard)
        try:
            if info.is_main:
                save_config(cfg, cfg.out_dir / "config.yaml")
            run.build()
            resume_path = _resolve_resume(cfg, cfg.out_dir, info)
            if resume_path is not None:
                run.resume(resume_path)
            return run.run()
        finally:
            run.monitor.close()
    finally:
        if not info_before:
            cleanup_distributed()
