"""The ``medcls`` command line.

Errors caused by the input (:class:`medcls.errors.MedclsError`) print one line
naming the file and the problem and exit with code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from medcls.errors import MedclsError, ReadError, TrainingStopped
from medcls.io import check_values
from medcls.modalities import PrepOptions, modality_family
from medcls.run_folder import RunFolder

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Classify medical images: read, prepare, train, evaluate.")


def _err(msg: str) -> None:
    typer.echo(f"medcls: error: {msg}", err=True)


def _warn(msg: str) -> None:
    typer.echo(f"medcls: warning: {msg}", err=True)


@app.callback()
def _main(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
          max_pixels: Optional[float] = typer.Option(None, "--max-pixels", help="Largest image or volume to "
                                                     "decode, in pixel values (rows x columns x frames x samples) "
                                                     "[default: $MEDCLS_MAX_PIXELS, else 268,435,456].")) -> None:
    """``--debug`` is read by :func:`main` before the command runs."""
    if max_pixels is not None:
        from medcls.io import pixel_limit

        ctx.with_resource(pixel_limit(int(max_pixels)))


# ---------------------------------------------------------------- info

def _info_record(arr, meta) -> dict:
    import numpy as np

    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    rec = {
        "path": meta.path,
        "format": meta.format,
        "modality": meta.modality,
        "shape": list(meta.shape),
        "frames": meta.frames,
        "spacing": list(meta.spacing) if meta.spacing else None,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "units": meta.units,
        "photometric": meta.photometric,
        "bits": meta.bits,
        "window": list(meta.window) if meta.window else None,
        "inverted": meta.inverted,
        "orientation": meta.orientation,
        "transfer_syntax": meta.transfer_syntax,
    }
    if meta.extra.get("skipped"):
        rec["skipped"] = [{"path": p, "problem": w} for p, w in meta.extra["skipped"]]
    rec["preparation"] = _default_preparation().describe(modality_family(meta.modality), meta.is_volume)
    notes = list(meta.extra.get("warnings", [])) + list(meta.extra.get("gaps", []))
    try:  # what predict and training would refuse: said here, the file is still described
        check_values(arr, meta)
    except ReadError as exc:
        notes.append(exc.problem)
    if notes:
        rec["warnings"] = notes
    return rec


def _default_preparation():
    """What ``medcls train`` does to a file of a folder dataset by default."""
    return PrepOptions().preparation(64, volume_mode="slices")


def _info_folder(folder: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every DICOM series and every other image file in a folder (not recursive)."""
    from medcls.io import iter_image_files, read
    from medcls.io.series import read_series, scan_series

    scan = scan_series(folder)
    records, bad = [], []
    for uid, info in scan.series.items():
        try:
            if len(info.files) == 1:
                arr, meta = read(info.files[0])
            else:
                arr, meta = read_series(folder, uid, allow_gaps=True)
                meta.extra["skipped"] = [s for s in meta.extra.get("skipped", []) if s[0] not in
                                         {p for p, _ in scan.skipped}]
            rec = _info_record(arr, meta)
            rec["series_files"] = len(info.files)
            records.append(rec)
        except ReadError as exc:
            bad.append((exc.path, exc.problem))
    for p, why in scan.skipped:
        if why == "not a DICOM file" and p in {str(f) for f in iter_image_files(folder, recursive=False)}:
            try:
                records.append(_info_record(*read(p)))
                continue
            except ReadError as exc:
                why = exc.problem
        bad.append((p, why))
    return records, bad


@app.command()
def info(paths: list[Path] = typer.Argument(..., help="Image files or DICOM series folders."),
         as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """Modality, shape, frames, spacing and value range of files and series."""
    from medcls.io import read

    records, bad, failed = [], [], False
    for p in paths:
        if p.is_dir():
            recs, b = _info_folder(p)
            records += recs
            bad += b
            if not recs:
                bad.append((str(p), "no readable images in this folder"))
                failed = True
            continue
        try:
            records.append(_info_record(*read(p)))
        except ReadError as exc:
            bad.append((exc.path, exc.problem))
            failed = True
    if as_json:
        typer.echo(json.dumps(records, indent=2))
    elif records:
        _print_info_table(records)
    for rec in records:
        for w in rec.get("warnings", []):
            _warn(f"{rec['path']}: {w}")
        for sk in rec.get("skipped", []):
            _warn(f"{sk['path']}: {sk['problem']} (slice left out)")
    for p, why in bad:
        _err(f"{p}: {why}")
    if failed:
        raise typer.Exit(2)


def _fmt_num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_info_table(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_lines=False)
    for c in ("path", "mod", "shape", "frames", "spacing (mm)", "range", "photometric", "transfer syntax"):
        t.add_column(c, overflow="fold")
    for r in records:
        sp = "x".join(f"{s:.3g}" for s in r["spacing"]) if r["spacing"] else "-"
        rng = f"{_fmt_num(r['min'])} .. {_fmt_num(r['max'])}" + (f" {r['units']}" if r["units"] else "")
        t.add_row(r["path"], r["modality"], "x".join(map(str, r["shape"])), str(r["frames"]), sp, rng,
                  r["photometric"] + (" (inverted)" if r["inverted"] else ""), r["transfer_syntax"] or r["format"])
    Console(width=160).print(t)


# ---------------------------------------------------------------- data

@app.command()
def data(spec: str = typer.Argument(..., metavar="PATH_OR_NAME", help="MedMNIST name, .npz, class folder or CSV."),
         data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where MedMNIST files are."),
         size: Optional[int] = typer.Option(None, "--size", help="MedMNIST size (28/64/128/224) or prepared size."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Summary of a dataset: classes, counts per split, image size, channels."""
    from medcls.data import load_dataset

    ds = load_dataset(spec, data_dir=data_dir, size=size)
    s = ds.summary()
    s["preparation"] = _dataset_preparation(ds, size)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        _print_dataset(s)
    for item in s["skipped"]:
        _err(f"{item['path']}: {item['problem']} (skipped)")
    for w in s["warnings"]:
        _warn(w)


def _dataset_preparation(ds, size: int | None) -> str:
    """How the dataset's images were (files) or will be (files given to a run trained on it) prepared."""
    from medcls.data import run_preparation

    options = PrepOptions()
    used = options.preparation(size or 64, volume_mode="slices")
    if ds.from_files:
        families = sorted({used.family_of(c) for c in ds.modality_counts})
        return "; ".join(used.describe(f, ds.is_volume) for f in families)
    prep = run_preparation(ds, options, used, size=ds.image_shape[-1], channels=3 if ds.is_volume else ds.channels,
                           volume_mode="2.5d" if ds.is_volume else "slices")
    return ("prepared by its authors (uint8); a file given to a run trained on it is prepared as "
            + prep.describe(prep.modality, ds.is_volume))


def _print_dataset(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=160)
    c.print(f"[bold]{s['name']}[/bold]  {s['task']}, modality {s['modality']}, "
            f"{'volume' if s['volume'] else 'image'} size {'x'.join(map(str, s['image_size']))}, "
            f"{s['channels']} channel(s)  [dim]{s['source']}[/dim]")
    t = Table()
    t.add_column("split")
    for name in s["classes"]:
        t.add_column(name, justify="right")
    t.add_column("total", justify="right")
    for split, row in s["counts"].items():
        t.add_row(split, *[str(row[n]) for n in s["classes"]], str(row["total"]))
    c.print(t)
    if s.get("preparation"):
        c.print(f"preparation: {s['preparation']}")


# ---------------------------------------------------------------- models

@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
           classes: int = typer.Option(2, "--classes", help="Number of classes."),
           channels: int = typer.Option(1, "--channels", help="Input channels."),
           size: int = typer.Option(28, "--size", help="Input height and width (28-512+); volume models: "
                                    "the cube's side."),
           volumes: bool = typer.Option(True, "--volumes/--no-volumes", help="List the ACS and 3-D forms too.")
           ) -> None:
    """Every model by name, with parameters and FLOPs at one input shape (volume forms: a cube of that side)."""
    from medcls.models import base_name, list_models, model_stats

    rows = [model_stats(n, classes, channels, size) for n in list_models()
            if volumes or base_name(n)[1] is None]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{classes} classes, {channels} x {size} x {size} input (volume forms: {channels} x {size}^3)")
    for c in ("model", "params", "params (train, with aux)", "GFLOPs", "GMACs"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        t.add_row(r["name"], f"{r['params']:,}", f"{r['params_train']:,}", f"{r['flops'] / 1e9:.3f}",
                  f"{r['macs'] / 1e9:.3f}")
    Console(width=160).print(t)


# ---------------------------------------------------------------- train / evaluate / predict

# The preparation options of `train` and `classical` (medcls.modalities.PrepOptions).
_PREP_HELP = "Preparation of image files (folders, manifests; MedMNIST comes prepared)"
_MODALITY = typer.Option("auto", "--modality", help=f"{_PREP_HELP}: prepare every file as xray | us | ct | mr | "
                         "other [default: auto, each file by its DICOM Modality; PNG/JPEG as other].")
_CT_WINDOWS = typer.Option(None, "--ct-windows", help="CT: HU windows, one channel each, e.g. lung,mediastinum,bone "
                           "(lung, mediastinum, abdomen, bone, brain) [default: abdomen].")
_FILE_WINDOW = typer.Option(True, "--file-window/--no-file-window", help="X-ray: use the window stored in the "
                            "DICOM file, when it has one (else the 0.5-99.5 percentile window).")
_CLAHE = typer.Option(False, "--clahe/--no-clahe", help="X-ray: CLAHE (contrast-limited adaptive histogram "
                      "equalisation) after windowing.")
_US_CROP = typer.Option(None, "--us-crop/--no-us-crop", help="Ultrasound: crop to the scan sector, dropping the "
                        "border, burnt-in text and logos [default: crop].")
_MR_NORM = typer.Option("percentile", "--mr-norm", help="MRI: percentile (1st-99th of the body to [0, 1]) | zscore "
                        "(over the body).")
_VOLUME_AXIS = typer.Option("axial", "--volume-axis", help="Volumes: slice along axial | coronal | sagittal.")


def _model_args(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings as keyword arguments; values read as JSON where they parse (numbers, booleans)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise MedclsError(f"--model-arg takes KEY=VALUE, not {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _windows(ct_windows: Optional[str]) -> list[str] | None:
    return [w.strip() for w in ct_windows.split(",") if w.strip()] if ct_windows else None


@app.command()
def train(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, "--data", help="MedMNIST name, .npz, class folder or CSV manifest."),
    model: str = typer.Option("vgg11_bn", "--model", help="Model name (see `medcls models`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to create."),
    size: Optional[int] = typer.Option(None, "--size", help="Input size (MedMNIST: 28/64/128/224)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Resize the items to this many pixels "
                                             "before the network (bilinear; e.g. 28-px MedMNIST upsampled to 64, "
                                             "which adds no detail but gives the network larger maps); evaluate "
                                             "and predict resize alike [default: the data's size]."),
    channels: Optional[int] = typer.Option(None, "--channels", help="Input channels (default: the data's; one per "
                                           "CT window)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: ~20,000 training items and at least "
                                         "--min-steps optimiser steps (4 to 100 epochs)."),
    min_steps: Optional[int] = typer.Option(None, "--min-steps", help="With automatic epochs: train at least this "
                                            "many optimiser steps [default: medcls.train.config.DEFAULT_MIN_STEPS]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size",
                                             help="Default: 128, smaller (to 32) on small sets."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default 1e-3 (AdamW) / 0.01 (SGD) at batch 128."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | sgd"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    mixup: float = typer.Option(0.0, "--mixup", help="Mixup: train on convex mixes of pairs of a batch's items "
                                "and of their labels, with weights drawn from Beta(a, a); this is a (0: off)."),
    balance: str = typer.Option("weighted", "--balance", help="weighted | sampler | none"),
    augment: str = typer.Option("auto", "--augment", help="auto | none | light | strong"),
    hflip: Optional[bool] = typer.Option(None, "--hflip/--no-hflip", help="Default: by dataset/modality."),
    tta: str = typer.Option("none", "--tta", help="none | flip: average each prediction with that of its "
                            "mirror image (validation, evaluate, predict)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping on validation AUC "
                                           "[default: half the epochs, at least 8]."),
    clip_grad: Optional[float] = typer.Option(None, "--clip-grad", help="Clip the gradient norm to this."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Validate and keep a moving average of the weights."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps"),
    volume_mode: Optional[str] = typer.Option(None, "--volume-mode", help="Volumes: slices | 2.5d (2-D networks) | "
                                              "acs | 3d (whole volumes: the model's ACS or 3-D form, e.g. "
                                              "vgg11_bn -> vgg11_bn_acs) [default: the model's; else 2.5d for "
                                              "MedMNIST volumes, slices for volume files]."),
    volume_spacing: Optional[float] = typer.Option(None, "--volume-spacing", help="acs / 3d on volume files: "
                                                   "resample to isotropic voxels of this many mm, then centre "
                                                   "crop/pad to --size cubed [default: resize the whole volume]."),
    labelled_fraction: float = typer.Option(1.0, "--labelled-fraction", help="Keep this fraction of train labels."),
    semi: Optional[str] = typer.Option(None, "--semi", help="pseudo | fixmatch | meanteacher"),
    refit: bool = typer.Option(False, "--refit/--no-refit", help="After choosing the epoch on validation, train "
                               "again from scratch on train + val up to that epoch and ship that model (the first "
                               "pass stays in RUN/selection)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where MedMNIST files are."),
    max_train_samples: Optional[int] = typer.Option(None, "--max-train-samples", help="Train on a random subset."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted (or Ctrl-C-stopped) "
                                          "run folder with its own configuration."),
    checkpoint_every: Optional[float] = typer.Option(None, "--checkpoint-every", help="Seconds between checkpoints "
                                                     "(last, best, state; always after the final epoch and on "
                                                     "Ctrl-C/SIGTERM); 0: every epoch. [default: 60; on --resume: "
                                                     "the run's]"),
    init: Optional[str] = typer.Option(None, "--init", help="AlexNet weight init: paper | kaiming."),
    model_arg: list[str] = typer.Option([], "--model-arg", help="A keyword argument of the model, KEY=VALUE "
                                        "(repeatable), e.g. --model-arg dropout=0.3 --model-arg fc_width=1024."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Train in N processes on this machine "
                                        "(DistributedDataParallel: one per GPU, else gloo on CPU), started by "
                                        "torch.distributed.run as `torchrun --standalone --nproc-per-node N` "
                                        "would. --batch-size stays the global batch."),
    sync_bn: bool = typer.Option(False, "--sync-bn/--no-sync-bn", help="Data parallel on CUDA: batch-norm "
                                 "statistics over the whole global batch instead of each process's block."),
    dist_timeout: float = typer.Option(600.0, "--dist-timeout", help="Data parallel: seconds a process waits for "
                                       "the others (a lost peer is an error after this, not a hang)."),
    operating_point: Optional[str] = typer.Option(None, "--operating-point", help="Binary: after training, choose "
                                                  "the decision threshold on validation (sens=X | spec=X | "
                                                  "youden), as `medcls evaluate --operating-point` does."),
    prevalence: Optional[float] = typer.Option(None, "--prevalence", help="With --operating-point: PPV and NPV at "
                                               "this prevalence."),
    modality: str = _MODALITY,
    ct_windows: Optional[str] = _CT_WINDOWS,
    file_window: bool = _FILE_WINDOW,
    clahe: bool = _CLAHE,
    us_crop: Optional[bool] = _US_CROP,
    mr_norm: str = _MR_NORM,
    volume_axis: str = _VOLUME_AXIS,
) -> None:
    """Train a CNN; the run folder gets weights, history, metrics.json and report.html.

    Under torchrun (`torchrun --nproc-per-node N -m medcls train ...`, any number
    of machines) every process trains its block of each global batch; see
    README, "More than one machine".
    """
    from medcls.train.config import TrainConfig

    if sync_bn and (device == "cpu" or not _cuda()):  # refused before any process is started
        raise MedclsError("--sync-bn needs CUDA devices: torch's SyncBatchNorm has no CPU kernel (on CPUs each "
                          "process's batch-norm uses its own block of the batch)")
    if nproc is not None:
        _hand_to_torchrun(ctx, nproc)
        return
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    if resume is None and restarted and out is not None and RunFolder(out).resumable():
        # torchrun --max-restarts ran the same command again after a failure: go on from the checkpoint
        resume, ctx = out, None
    if resume is not None:
        free = ("resume", "checkpoint_every", "dist_timeout", "operating_point", "prevalence")  # they move no result
        given = [] if ctx is None else ["/".join(p.opts + p.secondary_opts) for p in ctx.command.params
                                        if p.name not in free
                                        and getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE"]
        if given:
            raise MedclsError(f"--resume continues {resume} with its own configuration; drop "
                              f"{', '.join(given)} (only --checkpoint-every, --dist-timeout and the operating point may change), or train a new run")
        folder = RunFolder(resume)
        if folder.config.is_file():
            done = folder.read_config()
            cfg = dataclasses.replace(TrainConfig.from_dict(done.train), refit=done.refit is not None)
        elif folder.selection.config.is_file():  # a refit run stopped before its second pass
            cfg = dataclasses.replace(TrainConfig.from_dict(folder.selection.read_config().train), refit=True)
        else:
            raise MedclsError(f"{resume}: not a run folder (no config.json)")
        cfg.out = str(resume)
        if checkpoint_every is not None:  # the one setting a resume may change: it moves no result
            cfg = dataclasses.replace(cfg, checkpoint_every=checkpoint_every)
        root = _fit(cfg, resume=True, dist_timeout=dist_timeout, operating_point=operating_point,
                    prevalence=prevalence)
    else:
        if data is None:
            raise MedclsError("--data is required (a MedMNIST name, .npz, class folder or CSV manifest)")
        kwargs = {**_model_args(model_arg), **({"init": init} if init else {})}
        cfg = TrainConfig(data=data, model=model, out=str(out or Path("runs") / f"{Path(data).stem}-{model}"),
                          data_dir=str(data_dir) if data_dir else None, size=size, input_size=input_size, channels=channels, epochs=epochs,
                          min_steps=min_steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          weight_decay=weight_decay, label_smoothing=label_smoothing, mixup=mixup, balance=balance,
                          augment=augment, hflip=hflip, tta=tta,
                          patience=patience, clip_grad=clip_grad, ema=ema, seed=seed,
                          checkpoint_every=TrainConfig.checkpoint_every if checkpoint_every is None
                          else checkpoint_every,
                          device=device, volume_mode=volume_mode, volume_spacing=volume_spacing,
                          labelled_fraction=labelled_fraction, semi=semi, refit=refit, model_kwargs=kwargs,
                          max_train_samples=max_train_samples, modality=modality, ct_windows=_windows(ct_windows),
                          file_window=file_window, clahe=clahe, us_crop=us_crop, mr_norm=mr_norm,
                          volume_axis=volume_axis, sync_bn=sync_bn)
        _refuse_to_replace(Path(cfg.out), overwrite or restarted)
        root = _fit(cfg, dist_timeout=dist_timeout, operating_point=operating_point, prevalence=prevalence)
    if root is not None:
        _print_metrics(root)


_RUN_DATA_DIR_HELP = "Where MedMNIST files are (default: where the run was trained)."


def _refuse_to_replace(out: Path, overwrite: bool) -> None:
    """A finished or interrupted run is hours of work: replacing it takes ``--overwrite``."""
    folder = RunFolder(out)
    if not overwrite and folder.holds_run():
        resume = f", `medcls train --resume {out}` to continue it" if folder.resumable() else ""
        raise MedclsError(f"{out} already holds a run; pass --overwrite to replace it{resume}, or choose another --out")


def _fit(cfg, resume: bool = False, dist_timeout: float = 600.0, operating_point: str | None = None,
         prevalence: float | None = None) -> Path | None:
    """Train, then evaluate the run; a stop on request (Ctrl-C, SIGTERM) says how to resume, exit 128 + signal.

    Under torchrun every process trains and evaluates its share; rank 0 writes
    the run and returns its folder, the others None.
    """
    from medcls.distributed import barrier, init_world, shutdown
    from medcls.runs import evaluate_after_training
    from medcls.train.engine import fit

    world, devices = init_world(cfg.device, dist_timeout, devices_per_process=2 if "devices" in cfg.model_args else 1)
    try:
        try:
            root = fit(cfg, resume=resume, world=world, devices=devices)
        except TrainingStopped as exc:  # typer would swallow it into a bare exit code 130
            if world.is_main:
                typer.echo(f"medcls: {exc}", err=True)
            raise _Reported(128 + exc.signum) from None
        evaluate_after_training(root, device=str(devices[0]) if devices else cfg.device, world=world,
                                operating_point=operating_point, prevalence=prevalence)
        # Leave the process group together: rank 0 still writes the reports when the others are done. A rank
        # that tore its gloo connections down while rank 0 worked on once died at exit on CI (SIGABRT,
        # "terminate called without an active exception"), and torchrun failed the finished run.
        barrier(world)
    except RuntimeError as exc:  # a collective that failed: a peer crashed, was killed, or timed out
        if not world.active or isinstance(exc, MedclsError) or "--debug" in sys.argv:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # Said here, before leaving the process group: torchrun sends this process SIGTERM as soon as it sees the
        # peer gone, and once the stop handler is released that signal ends the process wherever it is.
        _err(f"process {world.rank} of {world.size}: lost the other training processes ({first[:200]}); "
             f"the run can go on from its last checkpoint with `medcls train --resume {cfg.out}`")
        raise _Reported(MedclsError.exit_code) from None
    finally:
        shutdown()
    return root if world.is_main else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _hand_to_torchrun(ctx: typer.Context, nproc: int) -> None:
    """``medcls train --nproc N ...`` is ``torchrun --standalone --nproc-per-node N -m medcls train ...``."""
    from medcls.distributed import launched

    if nproc < 1:
        raise MedclsError(f"--nproc must be at least 1, got {nproc}")
    if launched():
        raise MedclsError("--nproc starts the processes itself; under torchrun leave it out")
    argv = list((ctx.find_root().obj or {}).get("argv") or sys.argv[1:])
    rest, skip = [], False
    for a in argv:  # the same command, less --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "medcls", *rest])
    try:
        run(args)
    except ChildFailedError as exc:  # each process has said why on stderr already
        codes = sorted({f.exitcode for f in exc.failures.values()})
        typer.echo(f"medcls: error: {len(exc.failures)} of {nproc} training processes failed (exit code "
                   f"{', '.join(map(str, codes))}); their messages are above", err=True)
        raise _Reported(next((c for c in codes if c > 0), 1)) from None


class _Reported(Exception):
    """The command has said why it stops; ``main`` only returns the exit code."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


def _print_metrics(root: Path) -> None:
    from medcls.evaluate.metrics import decision_warning

    folder = RunFolder(root)
    m = folder.read_metrics()
    first = folder.selection.read_metrics()
    if "val" not in m and first:  # a refit run: validation belongs to its first pass
        m = {"val (first pass)": first.get("val"), **m}
    for split in ("val", "val (first pass)", "test"):
        if m.get(split):
            x = m[split]
            typer.echo(f"{split}: ACC {x['acc']:.4f}  AUC {x['auc']:.4f} (95% CI {x['auc_ci95'][0]:.3f}-"
                       f"{x['auc_ci95'][1]:.3f})  sensitivity {x['sensitivity']:.3f}  "
                       f"specificity {x['specificity']:.3f}  "
                       + (f"ECE {x['ece']:.3f}  " if "ece" in x else "") + f"n={x['n']}")
            if (warn := decision_warning(x)) is not None:
                typer.echo(f"  warning: {warn}", err=True)
            found = x.get("operating_point") or {}
            for label, op in (found.get("per_label") or ({"": found} if found else {})).items():
                at = op.get("at_prevalence")
                typer.echo(f"  {label + ' ' if label else ''}at {found['target']} (threshold "
                           f"{op['threshold']:.4f}, chosen on validation): "
                           f"sensitivity {op['sensitivity']:.3f} ({op['sensitivity_ci95'][0]:.3f}-"
                           f"{op['sensitivity_ci95'][1]:.3f})  specificity {op['specificity']:.3f} "
                           f"({op['specificity_ci95'][0]:.3f}-{op['specificity_ci95'][1]:.3f})  PPV {op['ppv']:.3f}"
                           f"  NPV {op['npv']:.3f}" + (f"  (at prevalence {at['prevalence']:g}: PPV "
                                                        f"{at['ppv']:.3f}, NPV {at['npv']:.3f})" if at else ""))
            if x.get("patient_level"):
                g = x["patient_level"]
                typer.echo(f"  per {g['column']} ({g['groups']} groups of {g['images']} images, {g['rule']}): "
                           f"ACC {g['acc']:.4f}  AUC {g['auc']:.4f} (95% CI {g['auc_ci95'][0]:.3f}-"
                           f"{g['auc_ci95'][1]:.3f})  sensitivity {g['sensitivity']:.3f}  "
                           f"specificity {g['specificity']:.3f}")
            for col, sub in (x.get("subgroups") or {}).items():
                for v, r in sub["values"].items():
                    typer.echo(f"  {col}={v}: n={r['n']}" + (f"  ACC {r['acc']:.4f}  AUC {r['auc']:.4f} (95% CI "
                                                             f"{r['auc_ci95'][0]:.3f}-{r['auc_ci95'][1]:.3f})"
                                                             if "auc" in r else f"  ({r.get('note', '')})"))
                if "largest_auc_gap" in sub:
                    gap = sub["largest_auc_gap"]
                    typer.echo(f"  largest AUC gap by {col}: {gap['gap']:.4f} (weakest: {gap['weakest']})")
            if "qwk" in x:
                typer.echo(f"  graded: quadratic-weighted kappa {x['qwk']:.3f}  mean absolute grade error "
                           f"{x['mae_grade']:.3f}")
    typer.echo(f"report: {folder.report}")


@app.command()
def evaluate(run: Path = typer.Argument(..., help="Run folder."),
             data: Optional[str] = typer.Option(None, "--data", help="Another dataset with the same classes."),
             split: str = typer.Option("test", "--split", help="train | val | test"),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=_RUN_DATA_DIR_HELP),
             operating_point: Optional[str] = typer.Option(None, "--operating-point", help="Binary runs: choose "
                                                           "the decision threshold on validation for sens=X, "
                                                           "spec=X or youden; saved in the run, used by predict "
                                                           "and serve."),
             prevalence: Optional[float] = typer.Option(None, "--prevalence", help="Also report PPV and NPV at "
                                                        "this prevalence of the positive class."),
             by: Optional[str] = typer.Option(None, "--by", help="Manifest columns (comma-separated, e.g. "
                                              "sex,site): metrics per subgroup with CIs, and the largest AUC gap."),
             group: Optional[str] = typer.Option(None, "--group", help="Manifest column whose images form one case "
                                                 "(patient, study, lesion) [default: patient_id, when there]."),
             aggregate: str = typer.Option("mean", "--aggregate", help="How a group's image probabilities combine: "
                                           "mean | max | noisy-or."),
             device: str = typer.Option("auto", "--device")) -> None:
    """Metrics (ACC, AUC with 95% CI, sensitivity, specificity, F1, confusion), plots, report."""
    from medcls.runs import evaluate_run

    columns = [c.strip() for c in by.split(",") if c.strip()] if by else None
    evaluate_run(run, data=data, splits=(split,), device=device, data_dir=str(data_dir) if data_dir else None,
                 operating_point=operating_point, prevalence=prevalence, by=columns, group=group, rule=aggregate)
    _print_metrics(run)


@app.command()
def compare(run_a: Path = typer.Argument(..., help="Run folder A."),
            run_b: Path = typer.Argument(..., help="Run folder B (the same classes)."),
            data: Optional[str] = typer.Option(None, "--data", help="Another dataset with the same classes "
                                               "[default: A's]."),
            split: str = typer.Option("test", "--split", help="val | test"),
            data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=_RUN_DATA_DIR_HELP),
            as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
            device: str = typer.Option("auto", "--device")) -> None:
    """Paired comparison of two runs on the same cases: DeLong's test of the AUCs, McNemar's of the decisions."""
    from medcls.runs import compare_runs

    c = compare_runs(run_a, run_b, data=data, split=split, device=device,
                     data_dir=str(data_dir) if data_dir else None)
    if as_json:
        typer.echo(json.dumps(c, indent=2))
        return
    typer.echo(f"{c['dataset']} {c['split']}, n={c['n']}: A = {c['model_a']} ({c['run_a']}), "
               f"B = {c['model_b']} ({c['run_b']})")
    bs = c["auc_bootstrap"]
    typer.echo(f"AUC  A {c['auc_a']:.4f}  B {c['auc_b']:.4f}  A - B {bs['diff']:+.4f} "
               f"(paired bootstrap 95% CI {bs['ci95'][0]:+.4f} to {bs['ci95'][1]:+.4f}, {bs['n_boot']} resamples)")
    if "delong" in c:
        d = c["delong"]
        typer.echo(f"DeLong: A - B {d['diff']:+.4f} (95% CI {d['diff_ci95'][0]:+.4f} to {d['diff_ci95'][1]:+.4f}), "
                   f"z = {d['z']:.2f}, p = {d['p']:.4g}")
    if "mcnemar" in c:
        m = c["mcnemar"]
        typer.echo(f"McNemar (argmax): ACC A {m['acc_a']:.4f}  B {m['acc_b']:.4f}; A right & B wrong "
                   f"{m['a_right_b_wrong']}, A wrong & B right {m['a_wrong_b_right']}, exact p = {m['p']:.4g}")


@app.command()
def predict(run: Path = typer.Argument(..., help="Run folder."),
            paths: list[Path] = typer.Argument(..., help="Files or folders (PNG/JPEG/DICOM/NIfTI/series)."),
            as_json: bool = typer.Option(False, "--json", help="Print a JSON list: one record per prediction, "
                                         "failure ('error') or file left out ('skipped')."),
            allow_gaps: bool = typer.Option(False, "--allow-gaps", help="Predict on a DICOM series with missing or "
                                            "unreadable slices (refused by default)."),
            allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Replace NaN / infinite pixel "
                                                 "values instead of refusing the image."),
            explain_dir: Optional[Path] = typer.Option(None, "--explain", help="Also write a heat map (PNG + "
                                                       "JSON) of each prediction into this folder, as `medcls "
                                                       "explain` does."),
            method: str = typer.Option("gradcam", "--method", help="With --explain: gradcam | gradcam++ | "
                                       "occlusion | ig."),
            out: Optional[Path] = typer.Option(None, "--out", help="Write one row per input to this .csv or "
                                               ".parquet, streaming through folders and CSV manifests of any size "
                                               "(files decoded in --workers processes, written in atomic chunks)."),
            workers: int = typer.Option(2, "--workers", help="With --out: processes reading and preparing files."),
            chunk: int = typer.Option(1000, "--chunk", help="With --out: inputs per part file (what a crash can "
                                      "lose)."),
            resume: bool = typer.Option(False, "--resume", help="With --out: keep the parts an earlier, stopped job "
                                        "wrote and predict the rest."),
            overwrite: bool = typer.Option(False, "--overwrite", help="With --out: replace an existing file."),
            shard: Optional[str] = typer.Option(None, "--shard", help="With --out: I/N, predict every N-th input "
                                                "from the I-th (0-based; e.g. a SLURM array index); under torchrun "
                                                "RANK/WORLD_SIZE. The last shard to finish merges all into --out."),
            group: Optional[str] = typer.Option(None, "--group", help="With --out and CSV manifests: a column "
                                                "(patient_id, study...) whose images form one case; OUT.groups.csv "
                                                "then holds one row per case."),
            aggregate: str = typer.Option("mean", "--aggregate", help="With --group: mean | max | noisy-or."),
            device: str = typer.Option("auto", "--device")) -> None:
    """Class and probabilities for each file, prepared as in training (volumes: per slice + aggregate)."""
    from medcls.runs import load_run

    if out is not None:
        _predict_to_file(run, paths, out, workers=workers, chunk=chunk, resume=resume, overwrite=overwrite,
                         shard=shard, device=device, allow_gaps=allow_gaps, allow_nonfinite=allow_nonfinite,
                         as_json=as_json, explain_dir=explain_dir, group=group, aggregate=aggregate)
        return
    if group is not None:
        raise MedclsError("--group goes with --out (a predictions file, and one per case beside it)")
    r = load_run(run, device)
    targets, left_out = _inputs(paths, "predict on")
    if explain_dir is not None:
        from medcls.explain_run import check_explainable

        check_explainable(r)  # refused before any work is done
    records, failed = [], False
    for res in r.predict_files(targets, allow_gaps=allow_gaps, allow_nonfinite=allow_nonfinite):
        if isinstance(res, ReadError):
            records.append({"path": res.path, "error": res.problem})
            failed = True
            continue
        rec = {"path": res.path, **({"series_uid": res.series_uid} if res.series_uid else {}),
               "class": r.decide(res.probs),
               "probabilities": {n: round(float(p), 6) for n, p in zip(r.class_names, res.probs)},
               **({"threshold": r.threshold} if r.threshold is not None else {})}
        if len(res.item_probs) > 1:
            rec["items"] = len(res.item_probs)
            rec["per_item"] = [[round(float(v), 6) for v in row] for row in res.item_probs]
        if res.warnings:
            rec["warnings"] = res.warnings
        if res.skipped:
            rec["skipped"] = [{"path": p, "problem": why} for p, why in res.skipped]
        records.append(rec)
    records += [{"path": p, "skipped": why} for p, why in left_out]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
    for rec in records:
        if "error" in rec:
            _err(f"{rec['path']}: {rec['error']}")
        elif "skipped" in rec and "class" not in rec:
            _warn(f"{rec['path']}: {rec['skipped']} (left out)")
        else:
            if not as_json:
                probs = "  ".join(f"{n}={p:.3f}" for n, p in rec["probabilities"].items())
                extra = f"  ({rec['items']} slices/frames, mean)" if "items" in rec else ""
                where = f"{rec['path']} [series {rec['series_uid']}]" if "series_uid" in rec else rec["path"]
                typer.echo(f"{where}: {rec['class']}  {probs}{extra}")
            for w in rec.get("warnings", []):
                _warn(f"{rec['path']}: {w}")
            for sk in rec.get("skipped", []):
                _warn(f"{sk['path']}: {sk['problem']} (slice left out)")
    if explain_dir is not None:
        from medcls.explain_run import FileExplanation, explain_files

        done = [t for t, rec in zip(targets, records) if "error" not in rec]
        for res in explain_files(r, done, explain_dir, method, allow_gaps=allow_gaps,
                                 allow_nonfinite=allow_nonfinite):
            if isinstance(res, FileExplanation):
                typer.echo(f"{res.path}: heat map {res.figure}", err=as_json)
    if failed:
        raise typer.Exit(2)


def _predict_to_file(run: Path, paths: list[Path], out: Path, *, workers: int, chunk: int, resume: bool,
                     overwrite: bool, shard: Optional[str], device: str, allow_gaps: bool, allow_nonfinite: bool,
                     as_json: bool, explain_dir: Optional[Path], group: Optional[str] = None,
                     aggregate: str = "mean") -> None:
    from medcls.batch import Shard, describe, predict_to_file
    from medcls.distributed import launched
    from medcls.runs import load_run

    if as_json or explain_dir is not None:
        raise MedclsError("--out writes a file of predictions; --json and --explain go without it")
    if workers < 0:
        raise MedclsError(f"--workers must be 0 (read in this process) or more, got {workers}")
    if shard is not None and launched():
        raise MedclsError("under torchrun each process takes its shard from RANK/WORLD_SIZE; leave out --shard")
    sh = Shard.parse(shard) if shard is not None else Shard.from_env()
    if launched() and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():  # each torchrun process its own GPU
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    for p in paths:
        if not p.exists():
            raise MedclsError(f"{p}: no such file or folder")
    summary = predict_to_file(load_run(run, device), paths, out, workers=workers, chunk=chunk, shard=sh,
                              resume=resume, overwrite=overwrite, allow_gaps=allow_gaps,
                              allow_nonfinite=allow_nonfinite, group=group, rule=aggregate)
    typer.echo(("" if sh.count == 1 else f"shard {sh.index}/{sh.count}: ") + describe(summary), err=True)
    if group and summary.merged:
        from medcls.batch import groups_path

        typer.echo(f"per {group} ({aggregate} of its images): {groups_path(out)}", err=True)


def _inputs(paths: list[Path], what: str):
    """The files and series behind ``paths``, and those left out; an error when nothing is left."""
    from medcls.io import collect_inputs

    targets, left_out = collect_inputs(paths)
    if not targets:
        raise MedclsError(f"{', '.join(map(str, paths))}: no image files to {what}"
                          + (f" ({len(left_out)} file(s) left out, first: {left_out[0][0]}: {left_out[0][1]})"
                             if left_out else ""))
    return targets, left_out


@app.command()
def explain(run: Path = typer.Argument(..., help="Run folder (a CNN run)."),
            paths: list[Path] = typer.Argument(..., help="Files or folders (PNG/JPEG/DICOM/NIfTI/series)."),
            out: Path = typer.Option(..., "--out", help="Folder for one PNG + JSON per input."),
            method: str = typer.Option("gradcam", "--method", help="gradcam | gradcam++ | occlusion | ig"),
            target: Optional[str] = typer.Option(None, "--target", help="Class to explain, by name or index "
                                                 "[default: the predicted class]."),
            layer: Optional[str] = typer.Option(None, "--layer", help="Grad-CAM layer by dotted name [default: the "
                                                "model's own]."),
            top: int = typer.Option(3, "--top", help="Volumes and multi-frame files: how many of the most decisive "
                                    "slices the figure shows."),
            sanity: bool = typer.Option(False, "--sanity", help="Also print the model-randomisation test: rank "
                                        "correlation of the maps with those of the same network re-initialised."),
            allow_gaps: bool = typer.Option(False, "--allow-gaps", help="As for predict."),
            allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="As for predict."),
            device: str = typer.Option("auto", "--device")) -> None:
    """Heat maps (Grad-CAM, Grad-CAM++, occlusion, integrated gradients) over each image as it is in the file."""
    from medcls.explain_run import FileExplanation, explain_files
    from medcls.explain_run import sanity as sanity_check
    from medcls.runs import load_run

    r = load_run(run, device)
    targets, left_out = _inputs(paths, "explain")
    failed = False
    explained = []
    results = explain_files(r, targets, out, method, target, layer=layer, top=top, allow_gaps=allow_gaps,
                            allow_nonfinite=allow_nonfinite)
    for t, res in zip(targets, results):
        if isinstance(res, ReadError):
            _err(str(res))
            failed = True
            continue
        rec = res.record
        peak = rec["peak"]
        where = ", ".join(f"{k} {v}" for k, v in peak.items() if k != "probability")
        typer.echo(f"{res.path}: {rec['class']} ({max(rec['probabilities'].values()):.3f}); "
                   f"{rec['explained']} map peaks at {where} -> {res.figure}")
        for w in res.warnings:
            _warn(f"{res.path}: {w}")
        explained.append(t)
    for p, why in left_out:
        _warn(f"{p}: {why} (left out)")
    if sanity and explained:
        import numpy as np

        items = np.concatenate([r.prepare_file(*(t if isinstance(t, tuple) else (t, None)), allow_gaps=allow_gaps,
                                               allow_nonfinite=allow_nonfinite) for t in explained[:16]])
        rho = sanity_check(r, items, method, layer=layer)
        verdict = "low: the maps depend on what the network learned" if abs(rho) < 0.5 else \
            "HIGH: the maps barely change when the weights are re-drawn; do not read them as explanations"
        typer.echo(f"sanity (Adebayo et al. 2018): rank correlation of {method} maps, trained vs re-initialised "
                   f"weights, over {min(len(items), 16)} images: {rho:.3f} ({verdict})")
    if failed:
        raise typer.Exit(2)


@app.command()
def export(run: Path = typer.Argument(..., help="Run folder (a CNN run)."),
           onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Write RUN/model.onnx (dynamic batch axis), "
                                     "checked against the PyTorch model with ONNX Runtime.")) -> None:
    """Export a CNN run's model for other runtimes (ONNX), as `medcls serve --backend onnx` uses it."""
    import numpy as np

    from medcls.models.export import export_onnx
    from medcls.runs import CNNRun, load_run

    r = load_run(run, "cpu")
    if not isinstance(r, CNNRun):
        raise MedclsError(f"{run} is a {r.config.kind} run: only CNN runs export to ONNX")
    if not onnx:
        raise MedclsError("nothing to export: --onnx is the one format")
    m = r.config.model
    path = export_onnx(r.model, r.folder.root / "model.onnx", in_channels=m.in_channels, size=m.input_size)
    import onnxruntime as ort

    side = [m.input_size] * (3 if r.whole_volume else 2)  # a volume run's items are cubes
    x = np.random.default_rng(0).integers(0, 256, (4 if len(side) == 2 else 2, m.in_channels, *side), dtype=np.uint8)
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xb = r.inputs(x).float().contiguous()
    with torch.no_grad():
        want = r.model(xb).float().cpu().numpy()
    got = session.run(None, {"image": xb.cpu().numpy()})[0]
    gap = float(np.abs(got - want).max())
    if gap > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise MedclsError(f"{path}: ONNX Runtime's logits differ from PyTorch's by {gap:.2e}; do not use it")
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); ONNX Runtime matches PyTorch within {gap:.1e}")


@app.command()
def serve(runs: list[Path] = typer.Argument(..., help="Run folders to serve (each by its folder name)."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs "
                                   "--token-file."),
          port: int = typer.Option(8000, "--port"),
          token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the Bearer token "
                                                    "every /v1 request must carry."),
          max_upload_mb: float = typer.Option(64, "--max-upload-mb", help="Largest request body."),
          workers: int = typer.Option(1, "--workers", help="uvicorn worker processes (each loads the models)."),
          backend: str = typer.Option("torch", "--backend", help="torch | onnx (after `medcls export RUN`)."),
          batching: bool = typer.Option(True, "--batching/--no-batching", help="Share forward passes between "
                                        "requests arriving within a few milliseconds."),
          device: str = typer.Option("auto", "--device")) -> None:
    """An HTTP API (/v1, OpenAPI at /docs) and a web page (/) for trained runs."""
    from medcls.serve import serve as run_service

    run_service(runs, host=host, port=port, token_file=token_file, max_upload_mb=max_upload_mb, workers=workers,
                backend=backend, batching=batching, device=device)


@app.command()
def classical(data: str = typer.Option(..., "--data", help="Dataset (as for train)."),
              features: str = typer.Option(
                  "auto", "--features",
                  help="auto (the default for images or volumes) or hog | sift | stats | texture | pixels (2-D) and "
                       "shape | pixels (whole volumes), combined with +"),
              classifier: str = typer.Option("all", "--classifier", help="bayes | svm | tree | knn | forest | all"),
              out: Path = typer.Option(..., "--out", help="Run folder."),
              size: Optional[int] = typer.Option(None, "--size"),
              data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
              quick: bool = typer.Option(False, "--quick", help="Smoke run: 300 training images, one grid point."),
              seed: int = typer.Option(0, "--seed"),
              overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
              modality: str = _MODALITY,
              ct_windows: Optional[str] = _CT_WINDOWS,
              file_window: bool = _FILE_WINDOW,
              clahe: bool = _CLAHE,
              us_crop: Optional[bool] = _US_CROP,
              mr_norm: str = _MR_NORM,
              volume_axis: str = _VOLUME_AXIS) -> None:
    """Features + a scikit-learn classifier; the same metrics, plots and report as train."""
    from medcls.classical import run_classical
    from medcls.runs import evaluate_after_training

    options = PrepOptions(modality=modality, ct_windows=tuple(_windows(ct_windows) or ()) or None,
                          file_window=file_window, clahe=clahe, us_crop=us_crop, mr_norm=mr_norm,
                          volume_axis=volume_axis)
    _refuse_to_replace(out, overwrite)
    best = run_classical(data, features=features, classifier=classifier, out=out, size=size,
                         data_dir=str(data_dir) if data_dir else None, seed=seed, quick=quick, options=options,
                         log=typer.echo)
    evaluate_after_training(out)
    table = json.loads(RunFolder(out).comparison.read_text())
    if len(table) > 1:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{RunFolder(out).read_config().features} features, test split")
        for c in ("classifier", "CV AUC", "val AUC", "test AUC", "test ACC", "fit s"):
            t.add_column(c, justify="left" if c == "classifier" else "right")
        for r in table:
            t.add_row(r["classifier"] + (" *" if r["classifier"] == best else ""), f"{r['cv_auc']:.4f}",
                      f"{r.get('val_auc', float('nan')):.4f}", f"{r.get('test_auc', float('nan')):.4f}",
                      f"{r.get('test_acc', float('nan')):.4f}", f"{r['fit_seconds']:.0f}")
        Console(width=120).print(t)
        typer.echo(f"* chosen on held-out AUC (the mean of cross-validated and validation AUC): {best}")
    _print_metrics(out)


# ---------------------------------------------------------------- unsupervised / ensembles

@app.command()
def cluster(data: str = typer.Option(..., "--data", help="Dataset (as for train)."),
            features: str = typer.Option("hog", "--features", help="hog | ssl | cnn:RUN"),
            out: Path = typer.Option(..., "--out", help="Output folder."),
            k: Optional[int] = typer.Option(None, "--k", help="Clusters (default: number of classes)."),
            method: str = typer.Option("kmeans", "--method", help="kmeans | gmm"),
            embedding: str = typer.Option("pca", "--embedding", help="2-D plot: pca | tsne | umap"),
            split: str = typer.Option("train", "--split"),
            max_samples: int = typer.Option(2000, "--max-samples", help="Cluster a random subset of this size "
                                             "(0: the whole split)."),
            ssl_epochs: int = typer.Option(20, "--ssl-epochs", help="SimCLR pretraining epochs (--features ssl)."),
            probe: bool = typer.Option(True, "--probe/--no-probe", help="Also score the features with a linear "
                                       "probe: logistic regression fitted on --split, tested on the test split."),
            data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
            seed: int = typer.Option(0, "--seed")) -> None:
    """k-means / GMM on features; NMI, ARI and purity against the labels; a linear probe; a 2-D embedding plot."""
    from medcls.cluster import cluster_dataset

    r = cluster_dataset(data, features, out, k=k, method=method, embedding=embedding, split=split,
                        max_samples=max_samples, data_dir=str(data_dir) if data_dir else None,
                        ssl_epochs=ssl_epochs, probe=probe, seed=seed, log=typer.echo)
    scores = f"  NMI {r['nmi']:.3f}  ARI {r['ari']:.3f}  purity {r['purity']:.3f}" if "nmi" in r else ""
    typer.echo(f"{r['data']} {r['split']}: {r['method']} k={r['k']} on {r['features']} ({r['n']} samples){scores}")
    if "probe" in r:
        pr = r["probe"]
        typer.echo(f"linear probe ({pr['n_train']} {r['split']} -> {pr['n_test']} test): ACC {pr['acc']:.3f}  "
                   f"AUC {pr['auc']:.3f}")
    typer.echo(f"wrote {out / 'cluster.json'}, {out / 'embedding_clusters.png'}")


@app.command()
def ensemble(runs: list[Path] = typer.Argument(..., help="Run folders trained on the same classes."),
             out: Path = typer.Option(..., "--out", help="Ensemble run folder."),
             data: Optional[str] = typer.Option(None, "--data", help="Evaluate on this dataset instead."),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=_RUN_DATA_DIR_HELP),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out.")) -> None:
    """Average the probabilities of several runs and evaluate like any run."""
    from medcls.runs import evaluate_after_training, make_ensemble

    _refuse_to_replace(out, overwrite)
    make_ensemble(runs, out)
    evaluate_after_training(out, data=data, data_dir=str(data_dir) if data_dir else None)
    _print_metrics(out)


# ---------------------------------------------------------------- demo

@app.command()
def demo(data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where MedMNIST files are."),
         dataset: str = typer.Option("pneumoniamnist", "--data", help="Default dataset."),
         model: str = typer.Option("vgg11_bn", "--model"),
         epochs: int = typer.Option(2, "--epochs"),
         max_train_samples: Optional[int] = typer.Option(None, "--max-train-samples"),
         out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (replaced if it exists).")) -> None:
    """The main job: read real files, train the default model on PneumoniaMNIST, evaluate, show how to predict."""
    from PIL import Image
    from rich.console import Console

    from medcls.data import load_dataset
    from medcls.io import read
    from medcls.io.samples import DEMO_FILES, sample_dicoms
    from medcls.train.config import TrainConfig

    c = Console(width=160)
    ds = load_dataset(dataset, data_dir=data_dir)
    _print_dataset(ds.summary())
    files = sample_dicoms(DEMO_FILES)
    c.print(f"\n[bold]Real DICOM files[/bold] shipped with pydicom / pydicom-data ({len(files)} found):")
    recs = []
    for f in files:
        try:
            recs.append(_info_record(*read(f)))
        except ReadError as exc:
            _err(str(exc))
    _print_info_table(recs)
    c.print(f"\n[bold]Training[/bold] {model} on {ds.name} for {epochs} epoch(s) on this machine's CPU/GPU...")
    cfg = TrainConfig(data=dataset, model=model, out=str(out), data_dir=str(data_dir) if data_dir else None,
                      epochs=epochs, max_train_samples=max_train_samples)
    root = _fit(cfg)
    _print_metrics(root)
    x, _ = ds.split("test")
    example = root / "example_test_image.png"
    Image.fromarray(x[0, 0] if x.ndim == 4 else x[0]).save(example)
    c.print(f"\nPredict on any PNG/DICOM/NIfTI file:  [bold]medcls predict {root} {example}[/bold]")
    c.print("Your own data: [bold]medcls train --data PATH_OR_CSV --model vgg16_bn --out runs/mine[/bold]")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning input errors into one line and exit 2."""
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = app(args=argv, standalone_mode=False, obj={"argv": list(argv if argv is not None else sys.argv[1:])})
    except MedclsError as exc:
        if debug:
            raise
        _err(str(exc))
        return exc.exit_code
    except (_Reported, typer.Exit) as exc:
        return exc.exit_code
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit code 130, below)
        rv = 130
    except Exception as exc:
        # Usage errors from typer's (vendored) click: they know how to show themselves.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        if type(exc).__name__ == "Abort":
            return 1
        if debug:
            raise
        if isinstance(exc, OSError) and exc.filename and exc.strerror:  # the file system refused: where and why
            _err(f"{exc.filename}: {exc.strerror}")
            return 1
        _err(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
    if rv == 130:  # typer's silent answer to Ctrl-C (no command exits 130 itself); say so
        typer.echo("medcls: interrupted (Ctrl-C)", err=True)
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def _console() -> None:
    sys.exit(main())
