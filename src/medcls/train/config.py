"""Training configuration: a typed dataclass, dumped as ``RUN/config.json``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from medcls.errors import MedclsError
from medcls.infer import TTA_MODES
from medcls.modalities import VOLUME_MODES, WHOLE_VOLUME_MODES, PrepOptions
from medcls.train.semi import SEMI_METHODS

__all__ = ["DEFAULT_MIN_STEPS", "TrainConfig", "VOLUME_BATCH_VOXELS"]

VOLUME_BATCH_VOXELS = 1 << 22  # voxels in one training batch of volumes (see TrainConfig.batch_for)
# Optimiser steps an automatic schedule takes at least (TrainConfig.epochs_for). 600 is about the schedule
# the other defaults were chosen with on BreastMNIST (37 epochs of 17 steps); on a fifth of PneumoniaMNIST's
# training split held out, AlexNet's 600-step schedule beat its 150-step one (held-out AUC 0.994 vs 0.989,
# one seed); on AdrenalMNIST3D's 2.5-D stacks, the check on a set it was not chosen on, it changed nothing
# (bench/README.md, *The epoch rule*).
DEFAULT_MIN_STEPS = 600



@dataclass
class TrainConfig:
    """Everything needed to reproduce a run (see ``medcls train --help``)."""

    data: str
    model: str = "vgg11_bn"
    out: str = "runs/run"
    data_dir: str | None = None
    size: int | None = None  # input size; None: the dataset's own
    input_size: int | None = None  # the items resized to this before the network (e.g. 28 px upsampled to 64)
    channels: int | None = None  # None: the dataset's own
    epochs: int | None = None  # None: auto, about 20,000 training items and >= min_steps steps (4 to 100 epochs)
    min_steps: int | None = None  # automatic epochs: at least this many optimiser steps; None: DEFAULT_MIN_STEPS
    batch_size: int | None = None  # None: auto, 128 (32 to 128 so that an epoch has >= 16 steps)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # None: 1e-3 for AdamW, 0.01 for SGD (at batch 128)
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    mixup: float = 0.0  # mixup's Beta(a, a) parameter a (Zhang et al. 2018); 0: off
    balance: str = "weighted"  # weighted | sampler | none
    augment: str = "auto"  # auto | none | light | strong
    hflip: bool | None = None  # None: decided by dataset/modality
    tta: str = "none"  # none | flip: average each prediction with that of the mirror image
    patience: int | None = None  # early stopping on validation AUC; None: auto, half the epochs (>= 8)
    clip_grad: float | None = None  # clip the gradient norm to this
    ema: bool = True  # validate, keep and ship an exponential moving average of the weights
    seed: int = 0
    checkpoint_every: float = 60.0  # seconds between writes of last/state (and a pending best); 0: every epoch
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA (bf16 where supported)
    sync_bn: bool = False  # data parallel: batch-norm statistics over the global batch (CUDA only)
    # volumes: slices | 2.5d (2-D networks) | acs | 3d (whole volumes, the model's ACS / 3-D form); None: the
    # model's own (acs / 3d for a *_acs / *_3d model), else 2.5d for MedMNIST volumes and slices for files
    volume_mode: str | None = None
    volume_spacing: float | None = None  # acs / 3d on volume files: resample to this isotropic spacing (mm)
    volume_slices: int = 8  # slices per volume used (centred), 0: all
    labelled_fraction: float = 1.0
    semi: str | None = None  # pseudo | fixmatch | meanteacher
    refit: bool = False  # train again on train + val up to the epoch validation chose (see fit)
    model_kwargs: dict = field(default_factory=dict)
    max_train_samples: int | None = None  # for quick runs and tests
    limit_eval_samples: int | None = None
    # how image files become model input (medcls.modalities.Preparation); for MedMNIST only the volume axis
    modality: str = "auto"  # auto: each file's own; or xray | us | ct | mr | other for all
    ct_windows: list[str] | None = None  # None: abdomen; several: one channel each
    file_window: bool = True  # X-ray: the window stored in the file, when there is one
    clahe: bool = False  # X-ray: CLAHE after windowing
    us_crop: bool | None = None  # ultrasound: crop to the scan sector; None: yes
    mr_norm: str = "percentile"  # MRI: percentile | zscore, statistics of the body only
    volume_axis: str = "axial"  # volumes: axial | coronal | sagittal slices

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise MedclsError(f"--optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.balance not in ("weighted", "sampler", "none"):
            raise MedclsError(f"--balance must be weighted, sampler or none, not {self.balance!r}")
        if self.augment not in ("auto", "none", "light", "strong"):
            raise MedclsError(f"--augment must be auto, none, light or strong, not {self.augment!r}")
        if self.tta not in TTA_MODES:
            raise MedclsError(f"--tta must be none or flip, not {self.tta!r}")
        if self.semi not in (None, *SEMI_METHODS):
            raise MedclsError(f"--semi must be pseudo, fixmatch or meanteacher, not {self.semi!r}")
        if not 0 < self.labelled_fraction <= 1:
            raise MedclsError(f"--labelled-fraction must be in (0, 1], got {self.labelled_fraction}")
        if self.volume_mode not in (None, *VOLUME_MODES):
            raise MedclsError(f"--volume-mode must be one of {', '.join(VOLUME_MODES)}, not {self.volume_mode!r}")
        self._settle_volume_model()
        if not self.checkpoint_every >= 0:
            raise MedclsError(f"--checkpoint-every must be 0 or more seconds, got {self.checkpoint_every}")
        if self.patience is not None and self.patience < 1:
            raise MedclsError("--patience must be at least 1")
        if self.size is not None and not 28 <= self.size <= 1024:
            raise MedclsError(f"--size must be from 28 to 1024 pixels (the CNNs' range), got {self.size}")
        if self.input_size is not None and not 28 <= self.input_size <= 1024:
            raise MedclsError(f"--input-size must be from 28 to 1024 pixels (the CNNs' range), got {self.input_size}")
        if self.min_steps is not None and self.min_steps < 0:
            raise MedclsError(f"--min-steps must be 0 or more, got {self.min_steps}")
        for name, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                            ("--channels", self.channels), ("--max-train-samples", self.max_train_samples)):
            if value is not None and value < 1:
                raise MedclsError(f"{name} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise MedclsError(f"--lr must be positive, got {self.lr}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise MedclsError(f"--clip-grad must be positive, got {self.clip_grad}")
        if not self.weight_decay >= 0 or not self.warmup_epochs >= 0:
            raise MedclsError(f"--weight-decay and warm-up epochs must be 0 or more, got {self.weight_decay} "
                              f"and {self.warmup_epochs}")
        if not 0 <= self.mixup <= 10:
            raise MedclsError(f"--mixup is the Beta(a, a) parameter a, from 0 (off) to 10, got {self.mixup}")
        if not 0 <= self.label_smoothing < 1:
            raise MedclsError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        # runs written while refit was decided by the training set's size stored None ("auto"); the CLI
        # resumes one that did refit as a refit run (its config has a refit section)
        self.refit = bool(self.refit)
        if self.refit and (self.semi or self.labelled_fraction < 1):
            raise MedclsError("--refit trains again with every label of train + val; it does not go with --semi "
                              "or --labelled-fraction below 1, which hold labels back on purpose")
        self.prep_options()  # the preparation options are checked here too

    def _settle_volume_model(self) -> None:
        """A whole-volume mode and the model's form agree: ``vgg11_bn`` with ``acs`` is ``vgg11_bn_acs``.

        The form is part of the model's name (what the registry builds and the
        run folder records), and a ``*_acs`` / ``*_3d`` name sets the mode.
        """
        from medcls.models import base_name, list_models, volume_name

        base, form = base_name(self.model)
        if form is not None:
            if self.volume_mode not in (None, form):
                raise MedclsError(f"{self.model} is the {form} form of {base} and trains on whole volumes; "
                                  f"--volume-mode {self.volume_mode} does not go with it (use {base} for "
                                  f"{self.volume_mode})")
            self.volume_mode = form
        elif self.volume_mode in WHOLE_VOLUME_MODES and self.model in list_models():
            self.model = volume_name(self.model, self.volume_mode)
        if self.volume_spacing is not None:
            if self.volume_mode not in WHOLE_VOLUME_MODES:
                raise MedclsError("--volume-spacing resamples whole volumes, for --volume-mode acs or 3d")
            if not 0 < self.volume_spacing <= 100:
                raise MedclsError(f"--volume-spacing must be from 0 to 100 mm, got {self.volume_spacing}")

    def prep_options(self) -> PrepOptions:
        """How image files are prepared for this run (MedMNIST data comes prepared)."""
        return PrepOptions(modality=self.modality, ct_windows=tuple(self.ct_windows) if self.ct_windows else None,
                           file_window=self.file_window, clahe=self.clahe, us_crop=self.us_crop,
                           mr_norm=self.mr_norm, volume_axis=self.volume_axis)

    @property
    def model_args(self) -> dict:
        """Model keyword arguments; AlexNet trains with He init unless told otherwise.

        The paper's N(0, 0.01) weights with unit biases were tuned for 90 epochs of
        SGD on ImageNet; from scratch with AdamW on a few thousand images they
        train far slower (validation AUC 0.81 vs 0.99 for VGG after 2 epochs on
        PneumoniaMNIST), so ``medcls train`` uses ``init="kaiming"`` by default.
        """
        kw = dict(self.model_kwargs)
        if self.model.startswith("alexnet"):
            kw.setdefault("init", "kaiming")
        return kw

    def epochs_for(self, n_train_items: int, batch_size: int | None = None) -> int:
        """``epochs``, or when auto: ~20,000 items seen and at least ``min_steps`` optimiser steps (4 to 100).

        Counting items alone gives a set of many items few steps: PneumoniaMNIST
        (4,708 images, batch 128) got 4 epochs of 37 steps, and AdrenalMNIST3D's
        9,504 2.5-D slice stacks 4 epochs. The floor in steps makes the schedule depend
        on how often the weights move, which is what convergence needs; it binds
        only between ~2,000 and ~20,000 items at the default batch (smaller sets
        already take more steps, larger ones 4 epochs of many steps). How the
        floor was chosen: bench/README.md, *The epoch rule*.
        """
        if self.epochs is not None:
            return self.epochs
        n = max(1, n_train_items)
        bs = batch_size or self.batch_for(n)
        floor = DEFAULT_MIN_STEPS if self.min_steps is None else self.min_steps
        by_steps = math.ceil(floor / max(1, math.ceil(n / bs)))
        return int(min(100, max(4, round(20_000 / n), by_steps)))

    def patience_for(self, epochs: int) -> int:
        """``patience``, or when auto: half the epochs, at least 8.

        Under a cosine schedule the validation AUC of a small set keeps rising
        until the learning rate has decayed; a fixed patience of 8 stopped
        BreastMNIST runs (37 epochs) at epoch 20-24, before that, and chose
        epochs of lower validation AUC (bench/README.md).
        """
        if self.patience is not None:
            return self.patience
        return max(8, epochs // 2)

    def batch_for(self, n_train_items: int, item_shape: tuple[int, ...] = ()) -> int:
        """``batch_size``, or when auto: 128, halved (down to 32) until an epoch has at least 16 steps.

        On small sets a batch of 128 gives a handful of steps per epoch and a
        noisy, slow start: on BreastMNIST (546 images) VGG-11-BN reached
        validation AUC 0.68 after 12 epochs at batch 128 and 0.89 after 11 at 32
        (same images seen, learning rate scaled with the batch).

        Volumes (``item_shape`` of three axes) also hold a batch to
        :data:`VOLUME_BATCH_VOXELS` (16 volumes at 64^3; at 28^3 the rule above
        gives 64 first): a training process of VGG-11-BN-3D at 64^3 and batch 16
        peaks at 7.0 GB resident, AlexNet-3D at 3.3 GB (``python
        bench/volume_speed.py --memory-child vgg11_bn_3d 64 16``), well inside a
        24 GB machine.
        """
        if self.batch_size is not None:
            return self.batch_size
        bs = 128
        while bs > 32 and n_train_items / bs < 16:
            bs //= 2
        if len(item_shape) == 3:
            voxels = max(1, int(item_shape[0]) * int(item_shape[1]) * int(item_shape[2]))
            while bs > 1 and bs * voxels > VOLUME_BATCH_VOXELS:
                bs //= 2
        return bs

    def learning_rate(self, batch_size: int) -> float:
        """``lr``, or 1e-3 (AdamW) / 0.01 (SGD) scaled linearly from batch 128."""
        if self.lr is not None:
            return self.lr
        base = 1e-3 if self.optimizer == "adamw" else 0.01
        return base * batch_size / 128

    @staticmethod
    def ema_decay(steps_per_epoch: int) -> float:
        """EMA decay with a time constant of about two epochs (0.9 to 0.9999).

        Small sets give few steps per epoch and a validation AUC that jumps from
        epoch to epoch; averaging the weights over the last couple of epochs
        smooths both the model and the choice of the best epoch.
        """
        return float(min(0.9999, max(0.9, 1.0 - 1.0 / (2.0 * steps_per_epoch))))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

