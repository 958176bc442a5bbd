"""The training loop: supervised and semi-supervised, CPU or GPU, resumable.

Design: the whole split is held in memory as uint8 ``(N, C, H, W)``; each batch
is indexed, converted and augmented on the training device (no per-image
Python transforms, no DataLoader workers), in ``channels_last``. All random
draws of an epoch come from generators seeded by (seed, epoch), and the global
RNG states are checkpointed with the weights (at an epoch end, every
``checkpoint_every`` seconds), so ``--resume`` after a crash reproduces the
uninterrupted run exactly. Ctrl-C or SIGTERM (a cluster's pre-emption notice)
finishes the current epoch, checkpoints it and stops; a second one stops at once.

Under torchrun the same loop runs in every process as data parallel training
(``DistributedDataParallel``; :mod:`medcls.distributed`): every rank draws the
same epoch order and batches from the seed, and takes its own contiguous block
of each global batch, so ``--batch-size``, the schedule and the learning rate
do not depend on the number of processes. Validation is sharded and gathered
(each item once). Rank 0 alone writes files and logs. A stop request on any
rank stops every rank after the same step, with a checkpoint of that step, so
the 30 s torchrun gives its workers after forwarding a SIGTERM is enough.

A pass is made of small parts: :func:`setup` builds the model, its weight
average, the optimiser and the schedule; :func:`restore` reads a checkpoint
back; :func:`train_one_epoch` and :func:`validate` do what they say;
:func:`save_checkpoint` writes what a resume needs; early stopping and stop
requests live in :mod:`medcls.train.stop`. :func:`fit` runs one pass, or two
for a refit. Training writes the run folder; evaluating it is the caller's step
(:func:`medcls.runs.evaluate_after_training`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medcls.data import Items, merge_items
from medcls.distributed import SINGLE, World, all_sum, any_true, barrier, broadcast_tensors, shard
from medcls.errors import MedclsError, TrainingStopped
from medcls.evaluate.metrics import auc_score
from medcls.infer import Normaliser, aggregate, autocast, channels_last, predict_items, reuse_host_memory, \
    select_device, set_threads, to_device_batch
from medcls.models import create_model, model_loss
from medcls.run_folder import DataInfo, ModelInfo, Preprocess, Refit, RunConfig, RunFolder, Schedule
from medcls.train.augment import Augment, Share, default_hflip, mixup_pairs
from medcls.train.checkpoint import load_state, load_weights, rng_state, save_state, save_weights, set_rng_state, \
    weights_snapshot
from medcls.train.config import TrainConfig
from medcls.train.data import TrainingData, prepare_data
from medcls.train.optim import ema_multi_avg_fn, make_optimizer, param_groups, warmup_cosine
from medcls.train.semi import consistency_loss, labelled_subset, pseudo_labels, teacher_update
from medcls.train.stop import EarlyStopping, StopRequest

__all__ = ["fit", "train_pass", "setup", "restore", "train_one_epoch", "validate", "save_checkpoint", "train_step",
           "Trainer", "Progress"]


def _log(msg: str) -> None:
    print(msg, flush=True)


def _quiet(msg: str) -> None:
    """The log of a rank other than 0: its lines would repeat rank 0's."""


def _logger(world: World):
    return _log if world.is_main else _quiet


def _progress(total: int, desc: str, world: World = SINGLE):
    import os
    import sys

    from tqdm import tqdm

    disable = not sys.stderr.isatty() or bool(os.environ.get("TQDM_DISABLE")) or not world.is_main
    return tqdm(total=total, desc=desc, leave=False, disable=disable, unit="img", dynamic_ncols=True)


# ---------------------------------------------------------------- fit: one pass, or two for a refit


def fit(cfg: TrainConfig, resume: bool = False, world: World = SINGLE,
        devices: list[torch.device] | None = None) -> Path:
    """Train a model as configured; write the run folder; return its path.

    With ``refit`` (``--refit``; off by default, see README for the measurement)
    training takes two passes, the second pass of
    early stopping in Goodfellow, Bengio & Courville (2016, algorithm 7.2): the
    first trains on the training split and chooses the epoch by validation AUC,
    exactly as without ``refit``, and is kept as a run of its own in
    ``RUN/selection`` (less its resume state once the refit is done); the
    second trains from scratch on train + validation with the same schedule up
    to that epoch, and is the model ``RUN`` ships. Its validation split is then
    training data.

    ``world`` and ``devices``: this process's place in data parallel training
    and its device(s) (:func:`medcls.distributed.init_world`); every rank calls
    ``fit`` and returns once rank 0 has written the run.
    """
    set_threads()
    device = devices[0] if devices else select_device(cfg.device)
    with reuse_host_memory(device):
        return _fit(cfg, resume, world, devices, device)


def _fit(cfg: TrainConfig, resume: bool, world: World, devices: list[torch.device] | None,
         device: torch.device) -> Path:
    folder = RunFolder(cfg.out)
    data = prepare_data(cfg)
    if world.is_main:
        _report_left_out(data)
    kw = dict(world=world, devices=devices)
    if not cfg.refit:
        if world.is_main and not resume and (folder.selection.config.is_file() or folder.selection.state.is_file()):
            folder.selection.remove()  # an earlier, replaced refit run's first pass
        train_pass(cfg, folder, data, data.train, data.val, device, resume=resume, **kw)
        barrier(world)  # the others read the run back to evaluate it
        return folder.root

    # what was done is decided from the files before rank 0 changes any of them
    refit = folder.read_config().refit if resume and folder.config.is_file() else None
    first_done = resume and folder.selection.state.is_file()
    second_done = resume and folder.state.is_file()
    barrier(world)
    if world.is_main and not resume:  # an earlier run's files would be taken for this run's if it stopped early
        folder.forget_run()
    if refit is None:  # the first pass: choose the epoch (a finished pass resumes as a no-op)
        history, schedule = train_pass(replace(cfg, out=str(folder.selection.root), refit=False), folder.selection,
                                       data, data.train, data.val, device, resume=first_done,
                                       resume_root=folder.root, **kw)
        refit = choose_epoch(history, schedule, data)
        _logger(world)(f"refit: epoch {refit.epoch} of {refit.of_epochs} chosen on validation; training again on "
                       f"train + val ({len(data.train) + len(data.val)} items) for {refit.epoch} epochs")
    # the second pass: train + val, from scratch, the same schedule up to the chosen epoch
    train_pass(cfg, folder, data, merge_items(data.train, data.val), None, device, resume=second_done,
               refit=refit, **kw)
    # the first pass is finished and superseded: its resume state (~0.4 GB for AlexNet at 28 px) can go
    if world.is_main:
        folder.selection.drop_resume_state()
    barrier(world)
    return folder.root


def _report_left_out(data: TrainingData, show: int = 20) -> None:
    """Every file the dataset left out, and every warning about it, on stderr: nothing skipped in silence."""
    import sys

    ds = data.ds
    for path, why in ds.skipped[:show]:
        print(f"medcls: warning: {path}: {why} (left out)", file=sys.stderr, flush=True)
    if len(ds.skipped) > show:
        print(f"medcls: warning: {len(ds.skipped) - show} more files left out (`medcls data {ds.source}` lists "
              "them all)", file=sys.stderr, flush=True)
    for w in ds.warnings:
        print(f"medcls: warning: {w}", file=sys.stderr, flush=True)


def choose_epoch(history: list[dict], schedule: Schedule, data: TrainingData) -> Refit:
    """The epoch of best validation AUC (the last one when no epoch had a defined AUC)."""
    aucs = np.array([float(r["val_auc"]) for r in history])
    defined = np.isfinite(aucs).any()
    chosen = int(np.nanargmax(aucs)) + 1 if defined else len(history)
    return Refit(epoch=chosen, of_epochs=schedule.epochs, batch_size=schedule.batch_size,
                 val_auc=float(aucs[chosen - 1]) if defined else None,
                 n_train=int(len(np.unique(data.train.sample))), n_val=int(len(np.unique(data.val.sample))))


# ---------------------------------------------------------------- a pass, in parts


@dataclass
class Trainer:
    """What one training pass builds and changes: the model, its averages, the optimiser, their schedule."""

    model: nn.Module
    teacher: nn.Module | None  # the mean teacher (semi="meanteacher")
    ema: nn.Module | None  # torch's AveragedModel of the weights (cfg.ema)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    norm: Normaliser
    aug: Augment  # the supervised batches' augmentation
    weak: Augment  # consistency losses: the teacher's / pseudo-labeller's view
    strong: Augment  # FixMatch's student view
    device: torch.device
    schedule: Schedule
    last_epoch: int  # the schedule's last epoch, or the refit's chosen one
    steps_per_epoch: int
    cfg: TrainConfig
    task: str
    num_classes: int
    net: nn.Module | None = None  # what training steps call: ``model``, or its DistributedDataParallel wrapper
    world: World = SINGLE

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and kept as ``best.safetensors``."""
        if self.teacher is not None:
            return self.teacher
        return self.ema.module if self.ema is not None else self.model

    @property
    def use_amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.schedule.epochs


@dataclass
class PassItems:
    """The training items of a pass, split into those whose labels are used and the rest."""

    x_labelled: np.ndarray
    y_labelled: np.ndarray
    x_unlabelled: np.ndarray  # empty unless semi-supervised
    n_labelled: int  # samples (images, volumes)
    n_unlabelled: int


@dataclass
class Progress:
    """Where a pass is: what a checkpoint restores besides the weights and the optimiser."""

    epoch: int = 0
    early: EarlyStopping = field(default_factory=lambda: EarlyStopping(8))
    history: list[dict] = field(default_factory=list)
    within: "EpochPosition | None" = None  # a stop request came in the middle of epoch ``epoch + 1``


@dataclass
class EpochPosition:
    """How far an epoch got when every rank stopped at a stop request: its next step, generator and sums."""

    step: int
    generator: torch.Tensor  # the epoch generator's state: the order is drawn again, the rest goes on from here
    loss_sum: float
    seen: int
    seconds: float


def _seed_all(seed: int) -> None:
    import random

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _class_weights(y: np.ndarray, k: int, task: str) -> torch.Tensor:
    """Inverse-frequency class weights (multi-label: negatives over positives per label, 0.1 to 50)."""
    if task == "multilabel":
        pos = y.sum(0)
        return torch.tensor(np.clip((len(y) - pos) / np.maximum(pos, 1), 0.1, 50), dtype=torch.float32)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return torch.tensor(len(y) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def setup(cfg: TrainConfig, data: TrainingData, train: Items, device: torch.device,
          refit: Refit | None = None, world: World = SINGLE,
          devices: list[torch.device] | None = None) -> tuple[Trainer, PassItems]:
    """Build everything a pass trains, in a fixed order from ``cfg.seed`` (a resume rebuilds it identically).

    Every rank builds the same model from the seed; ``DistributedDataParallel``
    also broadcasts rank 0's weights when it wraps it.
    """
    _seed_all(cfg.seed)
    k, task = data.num_classes, data.task
    labelled = labelled_subset(train.y, train.sample, cfg.labelled_fraction, cfg.seed)
    items = PassItems(train.x[labelled], train.y[labelled], train.x[~labelled] if cfg.semi else train.x[:0],
                      n_labelled=int(len(np.unique(train.sample[labelled]))),
                      n_unlabelled=int(len(np.unique(train.sample[~labelled]))) if cfg.semi else 0)
    norm = Normaliser.fit(items.x_labelled)
    channels, size = int(train.x.shape[1]), int(train.x.shape[-1])
    model_args = dict(cfg.model_args)
    if "devices" in model_args and devices and len(devices) > 1:  # the split AlexNet: this process's two GPUs
        model_args["devices"] = [str(d) for d in devices]
    model = create_model(cfg.model, num_classes=k, in_channels=channels, input_size=size, **model_args)
    placed = "devices" in model_args  # a model over several devices puts each part where it belongs
    model = channels_last(model if placed else model.to(device))
    if cfg.sync_bn and world.active:
        if device.type != "cuda":
            raise MedclsError("--sync-bn needs CUDA devices: torch's SyncBatchNorm has no CPU kernel (on CPUs "
                              "each process's batch-norm uses its own block of the batch)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    teacher = None
    if cfg.semi == "meanteacher":
        teacher = copy.deepcopy(model)
        for p in teacher.parameters():
            p.requires_grad_(False)

    weights = _class_weights(items.y_labelled, k, task).to(device) if cfg.balance == "weighted" else None
    if task == "multilabel":
        criterion = nn.BCEWithLogitsLoss(pos_weight=weights)
    else:
        criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)

    n = len(items.y_labelled)
    bs = refit.batch_size if refit else cfg.batch_for(n, tuple(train.x.shape[2:]))
    lr = cfg.learning_rate(bs)
    opt = make_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay), lr)
    epochs = refit.of_epochs if refit else cfg.epochs_for(n, bs)
    steps_per_epoch = max(1, math.ceil(n / bs))
    sched = warmup_cosine(opt, int(cfg.warmup_epochs * steps_per_epoch), steps_per_epoch * epochs)
    ema, ema_decay = None, cfg.ema_decay(steps_per_epoch)
    if cfg.ema and teacher is None:  # the mean teacher already is an EMA of the student
        from torch.optim.swa_utils import AveragedModel

        ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(ema_decay), use_buffers=True)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())

    hflip = cfg.hflip if cfg.hflip is not None else default_hflip(data.ds.name, data.ds.modality)
    preset = "light" if cfg.augment == "auto" else cfg.augment
    schedule = Schedule(epochs=epochs, patience=cfg.patience_for(epochs), batch_size=bs, lr=lr,
                        ema_decay=ema_decay if ema is not None or teacher is not None else None)
    trainer = Trainer(model=model, teacher=teacher, ema=ema, opt=opt, sched=sched, scaler=scaler,
                      criterion=criterion, norm=norm, aug=Augment(preset, hflip),
                      weak=Augment("light" if preset != "none" else "none", hflip), strong=Augment("strong", hflip),
                      device=device, schedule=schedule, last_epoch=min(epochs, refit.epoch if refit else epochs),
                      steps_per_epoch=steps_per_epoch, cfg=cfg, task=task, num_classes=k,
                      net=_data_parallel(model, device, placed) if world.active else model, world=world)
    return trainer, items


def _data_parallel(model: nn.Module, device: torch.device, placed: bool) -> nn.Module:
    """``model`` under DistributedDataParallel: gradients averaged over the ranks during backward.

    Every parameter takes part in every step's loss (GoogLeNet's auxiliary heads
    included), so DDP need not search the graph for unused ones. A model over
    two devices (the split AlexNet) has no single device for ``device_ids``.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" and not placed else None
    return DistributedDataParallel(model, device_ids=ids)


def run_config(trainer: Trainer, data: TrainingData, train: Items, items: PassItems,
               refit: Refit | None) -> RunConfig:
    """What ``config.json`` records of this pass."""
    cfg, ds = trainer.cfg, data.ds
    return RunConfig(
        kind="cnn",
        train=cfg.to_dict(),
        model=ModelInfo(cfg.model, trainer.num_classes, int(train.x.shape[1]), int(train.x.shape[-1]), cfg.model_args),
        data=DataInfo(name=ds.name, source=ds.source, task=trainer.task, class_names=list(ds.class_names),
                      modality=ds.modality, is_volume=ds.is_volume, volume_mode=data.volume_mode,
                      volume_slices=cfg.volume_slices, volume_axis=data.preparation.volume_axis,
                      n_train_labelled=items.n_labelled, n_train_unlabelled=items.n_unlabelled),
        preprocess=Preprocess(data.preparation, trainer.norm.mean, trainer.norm.std, hflip=trainer.aug.hflip,
                              augment="light" if cfg.augment == "auto" else cfg.augment, tta=cfg.tta),
        schedule=trainer.schedule,
        refit=refit,
        device=str(trainer.device),
        distributed=_world_info(trainer) if trainer.world.active else None,
    )


def _world_info(trainer: Trainer) -> dict:
    w, bs = trainer.world, trainer.schedule.batch_size
    return {"world_size": w.size, "backend": w.backend, "sync_bn": bool(trainer.cfg.sync_bn),
            "batch_per_process": [bs * (r + 1) // w.size - bs * r // w.size for r in range(w.size)]}


def restore(trainer: Trainer, folder: RunFolder) -> Progress:
    """Weights, optimiser, schedule, averages, RNG states and progress from the folder's last checkpoint."""
    if not folder.state.is_file():
        raise MedclsError(f"{folder.root}: nothing to resume (no state.pt)")
    st = load_state(folder.state)
    load_weights(trainer.model, folder.last)
    trainer.opt.load_state_dict(st["optimizer"])
    trainer.sched.load_state_dict(st["scheduler"])
    if trainer.teacher is not None and "teacher" in st:
        trainer.teacher.load_state_dict(st["teacher"])
    if trainer.ema is not None and "ema" in st:
        trainer.ema.load_state_dict(st["ema"])
    if "scaler" in st and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(st["scaler"])
    history = [dict(zip(st["history_keys"], row)) for row in st["history"].tolist()] if len(st["history"]) else []
    for r in history:  # stored as float64; counts go back to integers
        for key in ("epoch", "n_pseudo"):
            if key in r:
                r[key] = int(r[key])
    set_rng_state(st["rng"])
    early = EarlyStopping(trainer.schedule.patience, float(st["best_auc"]), int(st["bad_epochs"]))
    within = None
    if "within_step" in st:  # stopped in the middle of an epoch (data parallel stop request)
        sums = st["within_sums"].tolist()
        within = EpochPosition(int(st["within_step"]), st["within_generator"], float(sums[0]), int(sums[1]),
                               float(sums[2]))
    return Progress(int(st["epoch"]), early, history, within)


def save_checkpoint(trainer: Trainer, folder: RunFolder, progress: Progress, pending_best: dict | None) -> None:
    """``best`` (when a new one is pending), then ``last``, then ``state.pt``.

    ``state.pt`` commits the checkpoint: whatever it records (epoch, best AUC)
    is already on disk when a resume reads it.
    """
    if pending_best is not None:
        save_weights(pending_best, folder.best)
    save_weights(trainer.model, folder.last)  # what training continues from
    keys = list(progress.history[-1].keys()) if progress.history else []
    state = {"epoch": torch.tensor(progress.epoch), "optimizer": trainer.opt.state_dict(),
             "scheduler": trainer.sched.state_dict(),
             "best_auc": torch.tensor(progress.early.best, dtype=torch.float64),
             "bad_epochs": torch.tensor(progress.early.bad_epochs),
             "history": torch.tensor([[float(r[kk]) for kk in keys] for r in progress.history], dtype=torch.float64),
             "history_keys": keys, "rng": rng_state()}
    if trainer.teacher is not None:
        state["teacher"] = trainer.teacher.state_dict()
    if trainer.ema is not None:
        state["ema"] = trainer.ema.state_dict()
    if trainer.scaler.is_enabled():
        state["scaler"] = trainer.scaler.state_dict()
    if progress.within is not None:
        w = progress.within
        state.update(within_step=torch.tensor(w.step), within_generator=w.generator,
                     within_sums=torch.tensor([w.loss_sum, float(w.seen), w.seconds], dtype=torch.float64))
    save_state(folder.state, state)


def train_step(model, opt, sched, scaler, criterion, norm, aug, x: np.ndarray, y: np.ndarray, idx: np.ndarray,
               device: torch.device, use_amp: bool, gen: torch.Generator, extra_loss=None,
               clip_grad: float | None = None, share: Share | None = None, world_size: int = 1,
               mixup: float = 0.0) -> torch.Tensor:
    """One optimisation step on items ``idx`` of the in-memory uint8 arrays.

    Data parallel: ``idx`` is the global batch and this rank takes block
    ``share.part`` of it. Its mean loss is weighted by its part of the global
    mean (:func:`_loss_fraction`) times the world size, so that DDP's average of
    the ranks' gradients is the gradient of the global batch's mean loss, the
    one a single process would take, even when the blocks differ in size.
    ``mixup`` > 0: the (augmented) items are mixed in pairs and so are their
    losses (:func:`~medcls.train.augment.mixup_pairs`). The pairs lie within
    the block, so the partners' labels are the block's own, permuted: the same
    summed class weights, and the same fraction serves both halves exactly.
    Returns this rank's part of the global batch's mean loss (all of it in one process).
    """
    mine = idx[share.part] if share is not None else idx
    frac = _loss_fraction(criterion, y[idx], share) if share is not None else 1.0
    xb = norm(aug(to_device_batch(x, mine, device), gen, share))
    yb = torch.from_numpy(y[mine]).to(device)
    if mixup:
        lam, perm = mixup_pairs(mixup, gen, share or Share(len(mine), slice(0, len(mine))))
        perm = perm.to(device)
        xb = xb * lam + xb[perm] * (1.0 - lam)
    with autocast(device, use_amp):
        out = model(xb)
        loss = model_loss(out, yb, criterion)
        if mixup:
            loss = loss * lam + model_loss(out, yb[perm], criterion) * (1.0 - lam)
        if extra_loss is not None:
            loss = loss + extra_loss()
    weight = frac * world_size
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss * weight if weight != 1.0 else loss).backward()
    if clip_grad:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(opt)
    scaler.update()
    if sched is not None:
        sched.step()
    return loss.detach() * frac if frac != 1.0 else loss


def _loss_fraction(criterion: nn.Module, y: np.ndarray, share: Share) -> float:
    """The part of a batch's mean loss that block ``share.part`` holds.

    A class-weighted cross-entropy's mean divides by the items' summed class
    weights, not by their number, so a block's part is its share of that sum.
    """
    w = getattr(criterion, "weight", None)
    if isinstance(criterion, nn.CrossEntropyLoss) and w is not None and y.ndim == 1:
        wy = w.detach().cpu().double()[torch.from_numpy(y.astype(np.int64))]
        return float(wy[share.part].sum() / wy.sum())
    return share.size / share.of


def _epoch_items(trainer: Trainer, items: PassItems, epoch: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The supervised items of an epoch: the labelled ones, plus pseudo-labelled ones from epoch epochs/5 on."""
    cfg = trainer.cfg
    if cfg.semi == "pseudo" and len(items.x_unlabelled) and epoch >= max(1, trainer.schedule.epochs // 5):
        # labels from the validated (EMA) weights, balanced to the labelled class ratio
        probs = predict_items(trainer.eval_model, items.x_unlabelled, trainer.norm, trainer.device, trainer.task,
                              amp=cfg.amp, tta=cfg.tta, world=trainer.world)
        prior = np.bincount(items.y_labelled, minlength=trainer.num_classes) / len(items.y_labelled)
        pick, labels = pseudo_labels(probs, prior)
        trainer.model.train()
        x = np.concatenate([items.x_labelled, items.x_unlabelled[pick]])
        y = np.concatenate([items.y_labelled, labels.astype(items.y_labelled.dtype)])
        return x, y, len(pick)
    return items.x_labelled, items.y_labelled, 0


def train_one_epoch(trainer: Trainer, items: PassItems, epoch: int, start: EpochPosition | None = None,
                    stop_requested=None) -> dict:
    """One pass over the labelled items (whatever else a step sees; the schedule counts these steps).

    Returns the epoch's history fields: ``train_loss``, ``seconds``, ``images_per_s`` (and ``n_pseudo``),
    over all ranks. ``start``: go on from where a stopped epoch got to. ``stop_requested``
    (data parallel): asked after every step; when it says so (on every rank alike) the
    epoch ends there and the row has ``within``, the :class:`EpochPosition` to go on from.
    """
    cfg, t, world = trainer.cfg, trainer, trainer.world
    t.model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    if world.active:  # dropout masks: a stream per rank and epoch (the data draws are common, from gen)
        torch.manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + world.rank)
    x_epoch, y_epoch, n_pseudo = _epoch_items(t, items, epoch)
    n = len(items.y_labelled)
    if cfg.balance == "sampler" and t.task != "multilabel":
        w = (1.0 / np.bincount(items.y_labelled, minlength=t.num_classes)[items.y_labelled]).astype(np.float64)
        order = torch.multinomial(torch.from_numpy(w), n, replacement=True, generator=gen).numpy()
    else:
        order = torch.randperm(n, generator=gen).numpy()
    bs = t.schedule.batch_size
    t0, seen, loss_sum, secs0, first = time.perf_counter(), 0, 0.0, 0.0, 0
    if start is not None:  # its loss sum is every rank's: rank 0 carries it on
        gen.set_state(start.generator)
        first, seen, secs0 = start.step, start.seen, start.seconds
        loss_sum = start.loss_sum if world.is_main else 0.0
    bar = _progress(n, f"epoch {epoch + 1}/{t.last_epoch}", world)
    bar.update(min(n, first * bs))
    within = None
    for step, i in enumerate(range(0, n, bs)):
        if step < first:
            continue
        idx = np.sort(order[i:i + bs])
        if len(idx) < 2 * world.size and i > 0:
            continue  # BatchNorm needs two samples (on each rank)
        extra = None
        if n_pseudo:  # twice as many pseudo-labelled items as labelled ones, as FixMatch's unlabelled batch
            pidx = torch.randint(0, n_pseudo, (min(n_pseudo, 2 * len(idx)),), generator=gen).numpy()
            idx = np.sort(np.concatenate([idx, n + pidx]))
        share = _share(len(idx), world)
        if cfg.semi in ("fixmatch", "meanteacher") and len(items.x_unlabelled):
            x_u = items.x_unlabelled
            uidx = np.sort(torch.randint(0, len(x_u), (min(len(x_u), 2 * len(idx)),), generator=gen).numpy())
            ushare = _share(len(uidx), world)
            unlabelled = to_device_batch(x_u, uidx[ushare.part] if ushare else uidx, t.device)
            sched_step = t.sched.last_epoch
            extra = lambda: consistency_loss(cfg.semi, t.net, t.teacher, unlabelled, t.norm,  # noqa: E731
                                             t.weak, t.strong, gen, sched_step, t.total_steps, ushare)
        loss = train_step(t.net, t.opt, t.sched, t.scaler, t.criterion, t.norm, t.aug, x_epoch, y_epoch, idx,
                          t.device, t.use_amp, gen, extra, cfg.clip_grad, share, world.size, cfg.mixup)
        if t.teacher is not None:
            teacher_update(t.teacher, t.model, t.sched.last_epoch, t.schedule.ema_decay)
        if t.ema is not None:
            t.ema.update_parameters(t.model)
        seen += len(idx)  # the global batch: the same count on every rank
        loss_sum += float(loss.detach()) * len(idx)  # this rank's part of the batch's mean loss
        bar.update(len(idx))
        bar.set_postfix(loss=f"{loss_sum * world.size / max(1, seen):.4f}",  # rank 0's estimate
                        img_s=f"{(seen - (start.seen if start else 0)) / (time.perf_counter() - t0):.0f}")
        if stop_requested is not None and stop_requested():  # on every rank at once: a collective is safe here
            total = all_sum([loss_sum], world)[0]
            within = EpochPosition(step + 1, gen.get_state(), total, seen, secs0 + time.perf_counter() - t0)
            break
    bar.close()
    secs = secs0 + time.perf_counter() - t0
    if world.active:  # the epoch's loss over every rank's part; its time as the slowest rank's
        loss_sum, secs_sum = all_sum([loss_sum, secs], world)
        secs = secs_sum / world.size
    row = {"train_loss": round(loss_sum / max(1, seen), 6), "seconds": round(secs, 2),
           "images_per_s": round(seen / max(secs, 1e-9), 1)}
    if cfg.semi == "pseudo":
        row["n_pseudo"] = n_pseudo
    if within is not None:
        row["within"] = within
    return row


def _share(n: int, world: World) -> Share | None:
    """This rank's block of a global batch of ``n`` items (None in one process)."""
    return Share(n, shard(n, world)) if world.active else None


def _mean_log_loss(p: np.ndarray, y: np.ndarray, task: str) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    if task == "multilabel":
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def validate(trainer: Trainer, val: Items) -> dict:
    """``val_loss``, ``val_auc`` and ``val_acc`` of the validated weights, per sample (volumes aggregated).

    Data parallel: each rank predicts its block of the items and every rank
    scores all of them (each once), so every rank makes the same early-stopping
    decision and the figures are those of one process.
    """
    probs = predict_items(trainer.eval_model, val.x, trainer.norm, trainer.device, trainer.task,
                          amp=trainer.cfg.amp, tta=trainer.cfg.tta, world=trainer.world)
    probs, y = aggregate(probs, val.sample, val.y)
    if trainer.task == "multilabel":
        acc = float(((probs >= 0.5) == (y > 0.5)).mean())
    else:
        acc = float((probs.argmax(1) == y).mean())
    return {"val_loss": round(_mean_log_loss(probs, y, trainer.task), 6),
            "val_auc": round(auc_score(y, probs, trainer.task), 6), "val_acc": round(acc, 6)}


def train_pass(cfg: TrainConfig, folder: RunFolder, data: TrainingData, train: Items, val: Items | None,
               device: torch.device, *, resume: bool, resume_root: Path | None = None,
               refit: Refit | None = None, world: World = SINGLE,
               devices: list[torch.device] | None = None) -> tuple[list[dict], Schedule]:
    """One training pass into ``folder``; returns its history and schedule.

    ``val`` None is the refit pass: nothing to validate on; the weights after
    ``refit.epoch`` epochs of a ``refit.of_epochs``-long schedule are kept.
    """
    log, main = _logger(world), world.is_main
    trainer, items = setup(cfg, data, train, device, refit, world, devices)
    config = run_config(trainer, data, train, items, refit)
    if resume:
        progress = restore(trainer, folder)
        log(f"resuming {folder.root} after epoch {progress.epoch}"
            + (f", step {progress.within.step}" if progress.within else "")
            + (f", in {world.size} processes" if world.active else ""))
        if main:
            _note_world(folder, config)
    else:
        if main:
            folder.root.mkdir(parents=True, exist_ok=True)
        progress = Progress(early=EarlyStopping(trainer.schedule.patience))
    log(f"training {cfg.model} on {data.ds.name}: {len(items.y_labelled)} labelled items"
        + (f" + {len(items.x_unlabelled)} unlabelled ({cfg.semi})" if cfg.semi else "")
        + f", {'x'.join(map(str, train.x.shape[1:]))}, {trainer.num_classes} classes, "
          f"device {device}"
        + (f", {world.size} processes ({world.backend}), batch {trainer.schedule.batch_size} in all" if world.active
           else "")
        + (f" (refit on train + val: epoch {trainer.last_epoch} of {trainer.schedule.epochs})" if refit else ""))
    if not resume and main:
        folder.write_config(config)
    # Checkpoints (~0.4 GB for AlexNet at 28 px) can cost as much as a short epoch, so they are written
    # every cfg.checkpoint_every seconds and after the final epoch; a resume replays from the last one.
    last_checkpoint, pending_best = time.monotonic(), None
    # One process finishes its epoch on a stop request; several stop together after the same step, since
    # torchrun kills its workers 30 s after it forwards a SIGTERM, and a second signal must not lose the checkpoint.
    with StopRequest(log, second_aborts=not world.active) as stop:
        asked = (lambda: any_true(stop.requested, world)) if world.active else None
        for epoch in range(progress.epoch, trainer.last_epoch):
            if progress.early.exhausted:
                break
            row = {"epoch": epoch + 1, **train_one_epoch(trainer, items, epoch, progress.within, asked)}
            progress.within = row.pop("within", None)
            if progress.within is not None:  # every rank stopped after the same step
                if main:
                    save_checkpoint(trainer, folder, progress, pending_best)
                barrier(world)
                raise TrainingStopped(f"{folder.root}: stopped in epoch {epoch + 1}/{trainer.last_epoch}, after step "
                                      f"{progress.within.step} ({stop.name or 'a stop request on another process'}); "
                                      f"continue with `medcls train --resume {resume_root or folder.root}` (any "
                                      "number of processes)", stop.signum or 15)
            if world.active:  # the weights are the same on every rank; batch-norm statistics are made so
                broadcast_tensors(list(trainer.eval_model.buffers()), world)
            if val is not None:
                scores = validate(trainer, val)
                improved = progress.early.update(scores["val_auc"])
            else:  # the refit pass keeps its last epoch's weights
                scores, improved = {}, epoch + 1 == trainer.last_epoch
            row = {"epoch": row["epoch"], "train_loss": row["train_loss"], **scores, "lr": trainer.sched.get_last_lr()[0],
                   **{k: v for k, v in row.items() if k not in ("epoch", "train_loss")}}
            progress.history.append(row)
            progress.epoch = epoch + 1
            if improved and main:
                pending_best = weights_snapshot(trainer.eval_model)  # written with the next checkpoint
            final = epoch + 1 == trainer.last_epoch or progress.early.exhausted
            requested = any_true(stop.requested, world)  # asked during validation, on any rank
            stopping = requested and not final
            if main and (final or stopping or time.monotonic() - last_checkpoint >= cfg.checkpoint_every):
                save_checkpoint(trainer, folder, progress, pending_best)
                pending_best, last_checkpoint = None, time.monotonic()
            if main:
                folder.write_history(progress.history)
            _log_epoch(row, trainer, improved, cfg.semi == "pseudo", log)
            if stopping:
                barrier(world)
                raise TrainingStopped(f"{folder.root}: stopped after epoch {epoch + 1}/{trainer.last_epoch} "
                                      f"({stop.name or 'a stop request on another process'}); continue with "
                                      f"`medcls train --resume {resume_root or folder.root}`", stop.signum or 15)
    if main and not folder.best.is_file():
        save_weights(trainer.eval_model, folder.best)
    return progress.history, trainer.schedule


def _note_world(folder: RunFolder, config: RunConfig) -> None:
    """A resume in another number of processes: ``config.json`` says which sizes trained the run."""
    done = folder.read_config()
    before = (done.distributed or {}).get("world_sizes") or [(done.distributed or {}).get("world_size", 1)]
    now = (config.distributed or {}).get("world_size", 1)
    if before[-1] != now:
        info = dict(config.distributed or {"world_size": 1}, world_sizes=[*before, now])
        folder.write_config(replace(done, distributed=info))


def _log_epoch(row: dict, trainer: Trainer, improved: bool, pseudo: bool, log=_log) -> None:
    scores = (f"  val_loss {row['val_loss']:.4f}  val_auc {row['val_auc']:.4f}  val_acc {row['val_acc']:.4f}"
              if "val_auc" in row else "")
    log(f"epoch {row['epoch']:3d}/{trainer.last_epoch}  loss {row['train_loss']:.4f}{scores}  "
         f"{row['images_per_s']:.0f} img/s" + (f"  {row['n_pseudo']} pseudo-labelled" if pseudo else "")
         + ("  *" if improved else ""))
