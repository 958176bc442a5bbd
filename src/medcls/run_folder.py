"""The run folder, described in one place: its files and its ``config.json``.

Everything that writes or reads a run — training, the classical pipeline,
ensembles, evaluation, the report, the CLI — goes through :class:`RunFolder`
(where each file is) and :class:`RunConfig` (what ``config.json`` says, typed),
so no file name or configuration key is spelled out anywhere else.

``config.json`` carries a schema number. Schema 0 is what medcls wrote before
the number existed (its training schedule sat inside ``train`` as
``*_resolved`` keys); it loads unchanged. Schema 1 adds ``schema`` and keeps the
resolved schedule in ``schedule``.

A refit run (``medcls train --refit``) holds its first, epoch-choosing pass
as a run folder of its own in ``RUN/selection``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medcls._atomic import write_json, write_text
from medcls._version import __version__
from medcls.errors import MedclsError
from medcls.modalities import Preparation

__all__ = ["SCHEMA", "SELECTION", "RUN_KINDS", "RunFolder", "RunConfig", "DataInfo", "ModelInfo", "Preprocess",
           "Schedule", "Refit"]

SCHEMA = 1
SELECTION = "selection"  # the sub-folder of a refit run that holds its first, epoch-choosing pass
RUN_KINDS = ("cnn", "classical", "ensemble")


class RunFolder:
    """Where each file of a run lives. Paths only: nothing is read until asked."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    config = property(lambda self: self.root / "config.json")
    best = property(lambda self: self.root / "best.safetensors")  # the weights predict uses
    last = property(lambda self: self.root / "last.safetensors")  # the weights training continues from
    state = property(lambda self: self.root / "state.pt")  # optimiser, schedule, RNG: what a resume needs
    history = property(lambda self: self.root / "history.csv")
    metrics = property(lambda self: self.root / "metrics.json")
    report = property(lambda self: self.root / "report.html")
    roc = property(lambda self: self.root / "roc.png")
    confusion = property(lambda self: self.root / "confusion.png")
    calibration = property(lambda self: self.root / "calibration.png")
    decision_curve = property(lambda self: self.root / "decision_curve.png")  # binary runs
    model_card = property(lambda self: self.root / "model_card.md")
    gallery = property(lambda self: self.root / "gallery.png")
    curves = property(lambda self: self.root / "curves.png")
    pipeline = property(lambda self: self.root / "model.skops")  # a classical run's fitted pipeline
    comparison = property(lambda self: self.root / "comparison.json")  # a classical run's classifiers side by side

    @property
    def selection(self) -> "RunFolder":
        """A refit run's first pass (a run folder of its own)."""
        return RunFolder(self.root / SELECTION)

    # ------------------------------------------------------------ what is there

    def holds_run(self) -> bool:
        """A finished or interrupted run is here (its own config, or a refit's first pass)."""
        return self.config.is_file() or self.selection.config.is_file()

    def resumable(self) -> "RunFolder | None":
        """The folder whose ``state.pt`` a resume would continue from, if any."""
        for f in (self, self.selection):
            if f.state.is_file():
                return f
        return None

    # ------------------------------------------------------------ config.json

    def read_config(self) -> "RunConfig":
        """The run's configuration; a missing, unreadable or incomplete file is a one-line error."""
        if not self.config.is_file():
            raise MedclsError(f"{self.root}: not a medcls run (no config.json)")
        try:
            d = json.loads(self.config.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise MedclsError(f"{self.config}: corrupt run configuration (not UTF-8 text)") from exc
        except json.JSONDecodeError as exc:
            raise MedclsError(f"{self.config}: corrupt run configuration ({exc})") from exc
        except OSError as exc:
            raise MedclsError(f"{self.config}: cannot read ({exc.strerror or exc})") from exc
        return RunConfig.from_dict(d, self.config)

    def write_config(self, cfg: "RunConfig") -> None:
        write_json(self.config, cfg.to_dict())

    # ------------------------------------------------------------ metrics, history

    def read_metrics(self) -> dict:
        """``metrics.json`` (``{}`` before the run was evaluated)."""
        if not self.metrics.is_file():
            return {}
        try:
            return json.loads(self.metrics.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MedclsError(f"{self.metrics}: corrupt metrics file ({exc})") from exc

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics, metrics)

    def read_history(self) -> list[dict]:
        """``history.csv`` as rows of strings (``[]`` before the first epoch)."""
        if not self.history.is_file():
            return []
        with open(self.history, newline="") as fh:
            return list(csv.DictReader(fh))

    def write_history(self, rows: list[dict]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
        write_text(self.history, buf.getvalue())

    # ------------------------------------------------------------ clean-up

    def drop_resume_state(self) -> None:
        """Delete what only a resume needs (``state.pt``, ``last.safetensors``); weights and results stay."""
        for f in (self.state, self.last):
            f.unlink(missing_ok=True)

    def forget_run(self) -> None:
        """Delete the files that would make a new run here be taken for an earlier one."""
        for f in (self.config, self.state):
            f.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- config.json, typed


def _build(cls, d: Any, where: str, path: Path):
    """A dataclass from a dict, ignoring unknown keys; a missing required key names the file and the key."""
    if not isinstance(d, dict):
        raise MedclsError(f"{path}: corrupt run configuration ({where} is not an object)")
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in known})
    except TypeError as exc:
        missing = [f.name for f in fields(cls)
                   if f.name not in d and f.default is MISSING and f.default_factory is MISSING]
        raise MedclsError(f"{path}: corrupt run configuration ({where} lacks {', '.join(missing) or exc})") from exc


@dataclass
class DataInfo:
    """The dataset a run was trained on, and how its items were made."""

    name: str
    source: str
    task: str  # binary | multiclass | multilabel
    class_names: list[str]
    modality: str = "OT"
    is_volume: bool = False
    volume_mode: str = "slices"
    volume_slices: int = 0
    volume_axis: int = 0
    n_train_labelled: int | None = None
    n_train_unlabelled: int = 0


@dataclass
class ModelInfo:
    """What ``medcls.models.create_model`` needs to rebuild the network."""

    name: str
    num_outputs: int
    in_channels: int
    input_size: int
    kwargs: dict = field(default_factory=dict)


@dataclass
class Preprocess:
    """From a file to the tensor the network saw: preparation, then normalisation."""

    preparation: Preparation
    mean: list[float] | None = None
    std: list[float] | None = None
    hflip: bool | None = None
    augment: str | None = None
    tta: str = "none"  # runs written before --tta existed had none

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "preparation"}
        return {"preparation": self.preparation.to_dict(), **d}


@dataclass
class Schedule:
    """The training schedule as resolved from the automatic defaults."""

    epochs: int
    patience: int
    batch_size: int
    lr: float
    ema_decay: float | None = None


@dataclass
class Refit:
    """A refit run's first pass: where it is and what it chose."""

    epoch: int  # chosen on validation
    of_epochs: int  # of this schedule
    batch_size: int
    val_auc: float | None
    n_train: int
    n_val: int
    selection: str = SELECTION


def _operating_point(v: Any, path: Path) -> dict | None:
    if v is None:
        return None

    def ok(t) -> bool:
        return isinstance(t, (int, float)) and 0 <= t <= 1

    per = v.get("thresholds") if isinstance(v, dict) else None
    if not isinstance(v, dict) or not (ok(v.get("threshold")) or (isinstance(per, dict) and per
                                                                  and all(map(ok, per.values())))):
        raise MedclsError(f"{path}: corrupt run configuration (operating_point needs a threshold from 0 to 1, or "
                          "one per label)")
    return v


@dataclass
class RunConfig:
    """``config.json``: everything to rebuild, evaluate and reproduce a run."""

    kind: str  # cnn | classical | ensemble
    data: DataInfo
    train: dict  # the training settings as given (TrainConfig for a CNN); enough to train it again
    preprocess: Preprocess | None = None
    model: ModelInfo | None = None
    schedule: Schedule | None = None
    refit: Refit | None = None
    device: str | None = None
    # data parallel training (torchrun): {"world_size", "backend", "sync_bn"} of the processes that trained it
    distributed: dict | None = None
    # the decision threshold chosen on validation: {"target", "threshold", "chosen_on"} for a binary run,
    # {"target", "thresholds": {label: t}, "chosen_on"} for a multi-label one
    operating_point: dict | None = None
    classifier: str | None = None  # classical: the classifier chosen on validation
    features: str | None = None  # classical
    comparison: list | None = None  # classical: every classifier tried
    members: list[str] | None = None  # ensemble: member run folders
    member_models: list | None = None
    version: str = __version__
    schema: int = SCHEMA

    @property
    def model_name(self) -> str:
        if self.model is not None:
            return self.model.name
        return self.classifier or self.kind

    @property
    def preparation(self) -> Preparation | None:
        return self.preprocess.preparation if self.preprocess is not None else None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"schema": self.schema, "version": self.version, "kind": self.kind, "train": self.train}
        for name in ("model", "data", "preprocess", "schedule", "refit"):
            v = getattr(self, name)
            if v is not None:
                d[name] = v.to_dict() if hasattr(v, "to_dict") else asdict(v)
        for name in ("device", "distributed", "operating_point", "classifier", "features", "comparison", "members", "member_models"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: Any, path: str | Path = "config.json") -> "RunConfig":
        path = Path(path)
        if not isinstance(d, dict):
            raise MedclsError(f"{path}: corrupt run configuration (not a JSON object)")
        schema = d.get("schema", 0)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise MedclsError(f"{path}: written by a newer medcls (config schema {schema}; this one reads up to "
                              f"{SCHEMA}); upgrade medcls to use this run")
        kind = d.get("kind", "cnn")
        if kind not in RUN_KINDS:
            raise MedclsError(f"{path}: unknown run kind {kind!r} (expected {', '.join(RUN_KINDS)})")
        if "data" not in d:
            raise MedclsError(f"{path}: corrupt run configuration (no 'data' section)")
        train = dict(d.get("train") or {})
        schedule = d.get("schedule")
        if schedule is None and "epochs_resolved" in train:  # schema 0: the schedule sat inside train
            schedule = {k: train.pop(f"{k}_resolved") for k in ("epochs", "patience", "batch_size", "lr", "ema_decay")
                        if f"{k}_resolved" in train}
        for k in [k for k in train if k.endswith("_resolved")]:
            train.pop(k)
        prep = None
        if d.get("preprocess") is not None:
            p = dict(d["preprocess"]) if isinstance(d["preprocess"], dict) else {}
            if "preparation" not in p:
                raise MedclsError(f"{path}: corrupt run configuration (preprocess lacks preparation)")
            try:
                p["preparation"] = Preparation.from_dict(p["preparation"])
            except (TypeError, AttributeError, MedclsError) as exc:
                raise MedclsError(f"{path}: corrupt run configuration (preparation: {exc})") from exc
            prep = _build(Preprocess, p, "preprocess", path)
        out = cls(
            kind=kind,
            data=_build(DataInfo, d["data"], "data", path),
            train=train,
            preprocess=prep,
            model=_build(ModelInfo, d["model"], "model", path) if d.get("model") is not None else None,
            schedule=_build(Schedule, schedule, "schedule", path) if schedule else None,
            refit=_build(Refit, d["refit"], "refit", path) if d.get("refit") else None,
            device=d.get("device"),
            distributed=d.get("distributed") if isinstance(d.get("distributed"), dict) else None,
            operating_point=_operating_point(d.get("operating_point"), path),
            classifier=d.get("classifier"),
            features=d.get("features"),
            comparison=d.get("comparison"),
            members=d.get("members"),
            member_models=d.get("member_models"),
            version=str(d.get("version", "")),
            schema=SCHEMA,
        )
        if kind == "cnn" and (out.model is None or out.preprocess is None or out.preprocess.mean is None):
            raise MedclsError(f"{path}: corrupt run configuration (a CNN run needs model and preprocess sections)")
        if kind == "classical" and out.preprocess is None:
            raise MedclsError(f"{path}: corrupt run configuration (a classical run needs a preprocess section)")
        if kind == "ensemble" and not out.members:
            raise MedclsError(f"{path}: corrupt run configuration (an ensemble lists no members)")
        return out
