"""The ``medcls`` command line.

Errors caused by the input (:class:`medcls.errors.MedclsError`) print one line
naming the file and the problem and exit with code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from medcls.errors import MedclsError, ReadError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Classify medical images: read, prepare, train, evaluate.")
_STATE = {"debug": False}


def _err(msg: str) -> None:
    typer.echo(f"medcls: error: {msg}", err=True)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    _STATE["debug"] = debug


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
    return rec


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
                arr, meta = read_series(folder, uid)
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
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        _print_dataset(s)
    for item in s["skipped"]:
        _err(f"{item['path']}: {item['problem']} (skipped)")


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


# ---------------------------------------------------------------- models

@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
           classes: int = typer.Option(2, "--classes", help="Number of classes."),
           channels: int = typer.Option(1, "--channels", help="Input channels."),
           size: int = typer.Option(28, "--size", help="Input height and width (28-512+).")) -> None:
    """Every model by name, with parameters and FLOPs at one input shape."""
    from medcls.models import list_models, model_stats

    rows = [model_stats(n, classes, channels, size) for n in list_models()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{classes} classes, {channels} x {size} x {size} input")
    for c in ("model", "params", "params (train, with aux)", "GFLOPs", "GMACs"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        t.add_row(r["name"], f"{r['params']:,}", f"{r['params_train']:,}", f"{r['flops'] / 1e9:.3f}",
                  f"{r['macs'] / 1e9:.3f}")
    Console(width=160).print(t)


# ---------------------------------------------------------------- demo

@app.command()
def demo(data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where MedMNIST files are."),
         dataset: str = typer.Option("pneumoniamnist", "--data", help="Default dataset.")) -> None:
    """Read the default MedMNIST set and real DICOMs, and show what was found."""
    from rich.console import Console

    from medcls.data import load_dataset
    from medcls.io import read
    from medcls.io.samples import DEMO_FILES, sample_dicoms

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
    c.print("\nNext: [bold]medcls info FILE[/bold] on your own DICOM/NIfTI/PNG files, "
            "[bold]medcls data PATH[/bold] on a class folder or CSV manifest.")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning input errors into one line and exit 2."""
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = app(args=argv, standalone_mode=False)
    except MedclsError as exc:
        if debug:
            raise
        _err(str(exc))
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt,):
        _err("interrupted")
        return 130
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        if debug:
            raise
        _err(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def _console() -> None:
    sys.exit(main())
