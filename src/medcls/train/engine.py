"""The training loop: supervised and semi-supervised, CPU or GPU, resumable.

Design: the whole split is held in memory as uint8 ``(N, C, H, W)``; each batch
is indexed, converted and augmented on the training device (no per-image
Python transforms, no DataLoader workers), in ``channels_last``. All random
draws of an epoch come from generators seeded by (seed, epoch), and the global
RNG states are checkpointed with the weights (at an epoch end, every
``checkpoint_every`` seconds), so ``--resume`` after a crash reproduces the
uninterrupted run exactly. Ctrl-C or SIGTERM (a cluster's pre-emption notice)
finishes the current epoch, checkpoints it and stops; a second one stops at once.

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
from medcls.errors import MedclsError, TrainingStopped
from medcls.evaluate.metrics import auc_score
from medcls.infer import Normaliser, aggregate, autocast, predict_items, select_device, set_threads, to_device_batch
from medcls.models import create_model, model_loss
from medcls.run_folder import DataInfo, ModelInfo, Preprocess, Refit, RunConfig, RunFolder, Schedule
from medcls.train.augment import Augment, default_hflip
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


def _progress(total: int, desc: str):
    import os
    import sys

    from tqdm import tqdm

    disable = not sys.stderr.isatty() or bool(os.environ.get("TQDM_DISABLE"))
    return tqdm(total=total, desc=desc, leave=False, disable=disable, unit="img", dynamic_ncols=True)


# ---------------------------------------------------------------- fit: one pass, or two for a refit


def fit(cfg: TrainConfig, resume: bool = False) -> Path:
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
    """
    folder = RunFolder(cfg.out)
    set_threads()
    device = select_device(cfg.device)
    data = prepare_data(cfg)
    _report_left_out(data)
    if not cfg.refit:
        if not resume and (folder.selection.config.is_file() or folder.selection.state.is_file()):
            folder.selection.remove()  # an earlier, replaced refit run's first pass
        train_pass(cfg, folder, data, data.train, data.val, device, resume=resume)
        return folder.root

    if not resume:  # an earlier run's files here would be taken for this run's if it stopped in the first pass
        folder.forget_run()
    refit = folder.read_config().refit if resume and folder.config.is_file() else None
    if refit is None:  # the first pass: choose the epoch (a finished pass resumes as a no-op)
        history, schedule = train_pass(replace(cfg, out=str(folder.selection.root), refit=False), folder.selection,
                                       data, data.train, data.val, device,
                                       resume=resume and folder.selection.state.is_file(), resume_root=folder.root)
        refit = choose_epoch(history, schedule, data)
        _log(f"refit: epoch {refit.epoch} of {refit.of_epochs} chosen on validation; training again on train + val "
             f"({len(data.train) + len(data.val)} items) for {refit.epoch} epochs")
    # the second pass: train + val, from scratch, the same schedule up to the chosen epoch
    train_pass(cfg, folder, data, merge_items(data.train, data.val), None, device,
               resume=resume and folder.state.is_file(), refit=refit)
    # the first pass is finished and superseded: its resume state (~0.4 GB for AlexNet at 28 px) can go
    folder.selection.drop_resume_state()
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
          refit: Refit | None = None) -> tuple[Trainer, PassItems]:
    """Build everything a pass trains, in a fixed order from ``cfg.seed`` (a resume rebuilds it identically)."""
    _seed_all(cfg.seed)
    k, task = data.num_classes, data.task
    labelled = labelled_subset(train.y, train.sample, cfg.labelled_fraction, cfg.seed)
    items = PassItems(train.x[labelled], train.y[labelled], train.x[~labelled] if cfg.semi else train.x[:0],
                      n_labelled=int(len(np.unique(train.sample[labelled]))),
                      n_unlabelled=int(len(np.unique(train.sample[~labelled]))) if cfg.semi else 0)
    norm = Normaliser.fit(items.x_labelled)
    channels, size = int(train.x.shape[1]), int(train.x.shape[-1])
    model = create_model(cfg.model, num_classes=k, in_channels=channels, input_size=size, **cfg.model_args)
    model = model.to(device).to(memory_format=torch.channels_last)
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
    bs = refit.batch_size if refit else cfg.batch_for(n)
    lr = cfg.learning_rate(bs)
    opt = make_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay), lr)
    epochs = refit.of_epochs if refit else cfg.epochs_for(n)
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
                      steps_per_epoch=steps_per_epoch, cfg=cfg, task=task, num_classes=k)
    return trainer, items


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
    )


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
    return Progress(int(st["epoch"]), early, history)


def save_checkpoint(trainer: Trainer, folder: RunFolder, progress: Progress, pending_best: dict | None) -> None:
    """``best`` (when a new one is pending), then ``last``, then ``state.pt``.

    ``state.pt`` commits the checkpoint: whatever it records (epoch, best AUC)
    is already on disk when a resume reads it.
    """
    if pending_best is not None:
        save_weights(pending_best, folder.best)
    save_weights(trainer.model, folder.last)  # what training continues from
    keys = list(progress.history[-1].keys())
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
    save_state(folder.state, state)


def train_step(model, opt, sched, scaler, criterion, norm, aug, x: np.ndarray, y: np.ndarray, idx: np.ndarray,
               device: torch.device, use_amp: bool, gen: torch.Generator, extra_loss=None,
               clip_grad: float | None = None) -> torch.Tensor:
    """One optimisation step on items ``idx`` of the in-memory uint8 arrays."""
    xb = norm(aug(to_device_batch(x, idx, device), gen))
    yb = torch.from_numpy(y[idx]).to(device)
    with autocast(device, use_amp):
        loss = model_loss(model(xb), yb, criterion)
        if extra_loss is not None:
            loss = loss + extra_loss()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(opt)
    scaler.update()
    if sched is not None:
        sched.step()
    return loss


def _epoch_items(trainer: Trainer, items: PassItems, epoch: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The supervised items of an epoch: the labelled ones, plus pseudo-labelled ones from epoch epochs/5 on."""
    cfg = trainer.cfg
    if cfg.semi == "pseudo" and len(items.x_unlabelled) and epoch >= max(1, trainer.schedule.epochs // 5):
        # labels from the validated (EMA) weights, balanced to the labelled class ratio
        probs = predict_items(trainer.eval_model, items.x_unlabelled, trainer.norm, trainer.device, trainer.task,
                              amp=cfg.amp, tta=cfg.tta)
        prior = np.bincount(items.y_labelled, minlength=trainer.num_classes) / len(items.y_labelled)
        pick, labels = pseudo_labels(probs, prior)
        trainer.model.train()
        x = np.concatenate([items.x_labelled, items.x_unlabelled[pick]])
        y = np.concatenate([items.y_labelled, labels.astype(items.y_labelled.dtype)])
        return x, y, len(pick)
    return items.x_labelled, items.y_labelled, 0


def train_one_epoch(trainer: Trainer, items: PassItems, epoch: int) -> dict:
    """One pass over the labelled items (whatever else a step sees; the schedule counts these steps).

    Returns the epoch's history fields: ``train_loss``, ``seconds``, ``images_per_s`` (and ``n_pseudo``).
    """
    cfg, t = trainer.cfg, trainer
    t.model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    x_epoch, y_epoch, n_pseudo = _epoch_items(t, items, epoch)
    n = len(items.y_labelled)
    if cfg.balance == "sampler" and t.task != "multilabel":
        w = (1.0 / np.bincount(items.y_labelled, minlength=t.num_classes)[items.y_labelled]).astype(np.float64)
        order = torch.multinomial(torch.from_numpy(w), n, replacement=True, generator=gen).numpy()
    else:
        order = torch.randperm(n, generator=gen).numpy()
    bs = t.schedule.batch_size
    t0, seen, loss_sum = time.perf_counter(), 0, 0.0
    bar = _progress(n, f"epoch {epoch + 1}/{t.last_epoch}")
    for i in range(0, n, bs):
        idx = np.sort(order[i:i + bs])
        if len(idx) < 2 and i > 0:
            continue  # BatchNorm needs two samples
        extra = None
        if n_pseudo:  # twice as many pseudo-labelled items as labelled ones, as FixMatch's unlabelled batch
            pidx = torch.randint(0, n_pseudo, (min(n_pseudo, 2 * len(idx)),), generator=gen).numpy()
            idx = np.sort(np.concatenate([idx, n + pidx]))
        if cfg.semi in ("fixmatch", "meanteacher") and len(items.x_unlabelled):
            x_u = items.x_unlabelled
            uidx = np.sort(torch.randint(0, len(x_u), (min(len(x_u), 2 * len(idx)),), generator=gen).numpy())
            unlabelled = to_device_batch(x_u, uidx, t.device)
            step = t.sched.last_epoch
            extra = lambda: consistency_loss(cfg.semi, t.model, t.teacher, unlabelled, t.norm,  # noqa: E731
                                             t.weak, t.strong, gen, step, t.total_steps)
        loss = train_step(t.model, t.opt, t.sched, t.scaler, t.criterion, t.norm, t.aug, x_epoch, y_epoch, idx,
                          t.device, t.use_amp, gen, extra, cfg.clip_grad)
        if t.teacher is not None:
            teacher_update(t.teacher, t.model, t.sched.last_epoch, t.schedule.ema_decay)
        if t.ema is not None:
            t.ema.update_parameters(t.model)
        seen += len(idx)
        loss_sum += float(loss.detach()) * len(idx)
        bar.update(len(idx))
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    secs = time.perf_counter() - t0
    row = {"train_loss": round(loss_sum / max(1, seen), 6), "seconds": round(secs, 2),
           "images_per_s": round(seen / secs, 1)}
    if cfg.semi == "pseudo":
        row["n_pseudo"] = n_pseudo
    return row


def _mean_log_loss(p: np.ndarray, y: np.ndarray, task: str) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    if task == "multilabel":
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def validate(trainer: Trainer, val: Items) -> dict:
    """``val_loss``, ``val_auc`` and ``val_acc`` of the validated weights, per sample (volumes aggregated)."""
    probs = predict_items(trainer.eval_model, val.x, trainer.norm, trainer.device, trainer.task,
                          amp=trainer.cfg.amp, tta=trainer.cfg.tta)
    probs, y = aggregate(probs, val.sample, val.y)
    if trainer.task == "multilabel":
        acc = float(((probs >= 0.5) == (y > 0.5)).mean())
    else:
        acc = float((probs.argmax(1) == y).mean())
    return {"val_loss": round(_mean_log_loss(probs, y, trainer.task), 6),
            "val_auc": round(auc_score(y, probs, trainer.task), 6), "val_acc": round(acc, 6)}


def train_pass(cfg: TrainConfig, folder: RunFolder, data: TrainingData, train: Items, val: Items | None,
               device: torch.device, *, resume: bool, resume_root: Path | None = None,
               refit: Refit | None = None) -> tuple[list[dict], Schedule]:
    """One training pass into ``folder``; returns its history and schedule.

    ``val`` None is the refit pass: nothing to validate on; the weights after
    ``refit.epoch`` epochs of a ``refit.of_epochs``-long schedule are kept.
    """
    trainer, items = setup(cfg, data, train, device, refit)
    config = run_config(trainer, data, train, items, refit)
    if resume:
        progress = restore(trainer, folder)
        _log(f"resuming {folder.root} after epoch {progress.epoch}")
    else:
        folder.root.mkdir(parents=True, exist_ok=True)
        progress = Progress(early=EarlyStopping(trainer.schedule.patience))
    _log(f"training {cfg.model} on {data.ds.name}: {len(items.y_labelled)} labelled items"
         + (f" + {len(items.x_unlabelled)} unlabelled ({cfg.semi})" if cfg.semi else "")
         + f", {train.x.shape[1]}x{train.x.shape[-1]}x{train.x.shape[-1]}, {trainer.num_classes} classes, "
           f"device {device}"
         + (f" (refit on train + val: epoch {trainer.last_epoch} of {trainer.schedule.epochs})" if refit else ""))
    if not resume:
        folder.write_config(config)
    # Checkpoints (~0.4 GB for AlexNet at 28 px) can cost as much as a short epoch, so they are written
    # every cfg.checkpoint_every seconds and after the final epoch; a resume replays from the last one.
    last_checkpoint, pending_best = time.monotonic(), None
    with StopRequest(_log) as stop:
        for epoch in range(progress.epoch, trainer.last_epoch):
            if progress.early.exhausted:
                break
            row = {"epoch": epoch + 1, **train_one_epoch(trainer, items, epoch)}
            if val is not None:
                scores = validate(trainer, val)
                improved = progress.early.update(scores["val_auc"])
            else:  # the refit pass keeps its last epoch's weights
                scores, improved = {}, epoch + 1 == trainer.last_epoch
            row = {"epoch": row["epoch"], "train_loss": row["train_loss"], **scores, "lr": trainer.sched.get_last_lr()[0],
                   **{k: v for k, v in row.items() if k not in ("epoch", "train_loss")}}
            progress.history.append(row)
            progress.epoch = epoch + 1
            if improved:
                pending_best = weights_snapshot(trainer.eval_model)  # written with the next checkpoint
            final = epoch + 1 == trainer.last_epoch or progress.early.exhausted
            stopping = stop.requested and not final
            if final or stopping or time.monotonic() - last_checkpoint >= cfg.checkpoint_every:
                save_checkpoint(trainer, folder, progress, pending_best)
                pending_best, last_checkpoint = None, time.monotonic()
            folder.write_history(progress.history)
            _log_epoch(row, trainer, improved, cfg.semi == "pseudo")
            if stopping:
                raise TrainingStopped(f"{folder.root}: stopped after epoch {epoch + 1}/{trainer.last_epoch} "
                                      f"({stop.name}); continue with "
                                      f"`medcls train --resume {resume_root or folder.root}`", stop.signum)
    if not folder.best.is_file():
        save_weights(trainer.eval_model, folder.best)
    return progress.history, trainer.schedule


def _log_epoch(row: dict, trainer: Trainer, improved: bool, pseudo: bool) -> None:
    scores = (f"  val_loss {row['val_loss']:.4f}  val_auc {row['val_auc']:.4f}  val_acc {row['val_acc']:.4f}"
              if "val_auc" in row else "")
    _log(f"epoch {row['epoch']:3d}/{trainer.last_epoch}  loss {row['train_loss']:.4f}{scores}  "
         f"{row['images_per_s']:.0f} img/s" + (f"  {row['n_pseudo']} pseudo-labelled" if pseudo else "")
         + ("  *" if improved else ""))
