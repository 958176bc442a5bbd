"""Render README's results tables from bench/results/*.json (no hand-copied numbers).

    python bench/report.py           # rewrite the marked blocks of README.md
    python bench/report.py --check   # exit 1 if README differs from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
MARK = "<!-- bench:{name} -->"
END = "<!-- /bench:{name} -->"


def _load(name: str) -> dict | None:
    p = HERE / "results" / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _machine(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    cpu = f"{m['cpu']} ({m['vector']})" if m.get("vector") else m["cpu"]
    return f"{cpu}, {m['cores']} cores{gpu}; Python {m['python']}, torch {m['torch']}"


def accuracy_block() -> str:
    r = _load("accuracy")
    if r is None:
        return "_No full accuracy run recorded yet: run `python bench/accuracy.py`._"
    lines = [f"Measured on {_machine(r['machine'])}. Test split; ours are single "
             "runs with `medcls train` / `medcls classical` defaults at 28 px (mean ± sd where several seeds ran), "
             "each with its wall time on this machine; published rows are copied from "
             "`../shared/reference/published_results.json` with their sources.", ""]
    for data, d in r["datasets"].items():
        default = d.get("command", r["command"])
        top = _machine(r["machine"])

        def source(s, default=default, d=d):  # a row's command, and its machine (rows merged from other runs)
            return s.get("command", default), _machine(s.get("machine") or d.get("machine") or r["machine"])

        sources = list(dict.fromkeys(source(s) for s in d["ours"].values()))
        machines = {m for _, m in sources}
        # one machine for the whole table: said once, unless it is the file's; else each command names its own
        only = next(iter(machines)) if len(machines) == 1 else None
        where = f"; measured on {only}" if only and only != top else ""

        def named(c, m):
            return f"`{c}`" + (f" on {m}" if only is None and m != top else "")

        if len(sources) == 1:
            lines += [f"**{data}** (a model predicting the majority class scores ACC {d['majority_rate']:.3f}; "
                      f"{named(*sources[0])}{where})", ""]
        else:  # rows measured by different runs of the bench (--merge): each row names its command
            lines += [f"**{data}** (a model predicting the majority class scores ACC {d['majority_rate']:.3f}; "
                      "rows measured by " + "; ".join(f"[{i}] {named(c, m)}" for i, (c, m) in enumerate(sources, 1))
                      + where + ")", ""]
        lines += ["| method | AUC | ACC | time |", "|---|---|---|---|"]
        volumes = data.endswith("3d")
        for name, s in d["ours"].items():
            tag = f" [{sources.index(source(s)) + 1}]" if len(sources) > 1 else ""
            sd = len(s["runs"]) > 1
            if volumes and not name.endswith(("ACS", "3-D")) and not name.startswith(("Classical", "Ensemble")):
                name += " 2.5-D"  # a 2-D network on a volume set sees stacks of three slices
            feats = s["runs"][0].get("features") if name.startswith("Classical") else None
            if feats:
                name = f"{name[:-1]}, {feats})" if name.endswith(")") else f"{name} ({feats})"
            if s["runs"][0].get("families"):  # an ensemble of the families run beside it
                name += f" ({' + '.join(s['runs'][0]['families'])})"
            if sd:
                name += f", {len(s['runs'])} seeds"
            auc = f"{s['auc_mean']:.3f}" + (f" ± {s['auc_sd']:.3f}" if sd else "")
            acc = f"{s['acc_mean']:.3f}" + (f" ± {s['acc_sd']:.3f}" if sd else "")
            # a model under the majority rate does worse than answering the commonest class: a failure, not a result
            below = s["acc_mean"] < d["majority_rate"] - 1e-9
            flag = (" ⚠ collapsed to the majority class" if s["collapsed"]
                    else " ⚠ ACC below the majority class's" if below else "")
            lines.append(f"| **medcls: {name}**{tag}{flag} | {auc} | {acc} | {s['seconds_mean']:.0f} s |")
            if "first_pass_auc_mean" in s:  # refit by default on small sets: the same runs' first pass alone
                lines.append(f"| medcls: {name}, first pass only (`--no-refit`) | {s['first_pass_auc_mean']:.3f} | "
                             f"{s['first_pass_acc_mean']:.3f} | |")
        for p in d["published"]:
            auc = "–" if p["auc"] is None else f"{p['auc']:.3f}"
            acc = "–" if p["acc"] is None else f"{p['acc']:.3f}"
            lines.append(f"| {p['method']} ({p['source'].split(',')[0]}) | {auc} | {acc} | |")
        lines.append("")
    return "\n".join(lines).rstrip()


def speed_block() -> str:
    r = _load("speed")
    if r is None:
        return "_No full speed run recorded yet: run `python bench/speed.py`._"
    c = r["cpu"]
    peak = (f"fp32 peak {c['peak_gflops']:.1f} GFLOP/s (the better of a 2048² matmul, "
            f"{c['matmul_peak_gflops']:.1f}, and a 512-channel 3×3 convolution, {c['conv_peak_gflops']:.1f})")
    lines = [f"Measured with `{r['command']}` on {_machine(r['machine'])}; {peak} measured in the same run.", "",
             "| model | px | train img/s (medcls) | train img/s (plain loop) | ratio | infer img/s | "
             "p50 / p95 ms | train % of peak |", "|---|---|---|---|---|---|---|---|"]
    for x in c["cnn"]:
        lines.append(f"| {x['model']} | {x['size']} | {x['train_images_per_s']:.1f} | "
                     f"{x['plain_train_images_per_s']:.1f} ({x['plain_model']}) | {x['train_speedup']:.2f}× | "
                     f"{x['infer_images_per_s']:.1f} | {x['latency_p50_ms']:.1f} / {x['latency_p95_ms']:.1f} | "
                     f"{x['train_pct_of_peak']:.0f}% |")
    rd, h = c["reading"], c["hog"]
    lines += ["", f"DICOM reading ({rd['files']} pydicom-data files): medcls {rd['medcls_files_per_s']:.1f} files/s, "
              f"plain pydicom {rd['pydicom_files_per_s']:.1f} files/s ({rd['overhead_pct']:+.0f}% for modality LUT, "
              f"colour and inversion handling).",
              f"HOG ({h['images']} images, 28 px): medcls {h['medcls_images_per_s']:.0f} img/s, per-image "
              f"`skimage.feature.hog` loop {h['skimage_loop_images_per_s']:.0f} img/s ({h['ratio']:.1f}×)."]
    lines += ["", gpu_lines()]
    return "\n".join(lines)


def gpu_lines() -> str:
    r = _load("speed_gpu")
    if r is None:
        return "No GPU run recorded yet: `python bench/speed.py --gpu` adds it where CUDA is."
    g = r["gpu"]
    lines = [f"On a GPU, measured with `{r['command']}` on {g['name']} (CUDA {g['cuda']}; "
             f"Python {r['machine']['python']}, torch {r['machine']['torch']}): medcls's loop with AMP, pinned memory "
             "and non-blocking copies vs the plain loop (per-image transforms in a DataLoader, fp32).", "",
             "| model | px | batch | train img/s (medcls, AMP) | train img/s (plain loop) | ratio | infer img/s | "
             "p50 / p95 ms |", "|---|---|---|---|---|---|---|---|"]
    for x in g["cnn"]:
        lines.append(f"| {x['model']} | {x['size']} | {x['batch']} | {x['train_images_per_s']:.0f} | "
                     f"{x['plain_train_images_per_s']:.0f} ({x['plain_model']}) | {x['train_speedup']:.1f}× | "
                     f"{x['infer_images_per_s']:.0f} | {x['latency_p50_ms']:.2f} / {x['latency_p95_ms']:.2f} |")
    lines += ["", "medcls's loop alone, fp32 vs AMP (64 px, batch 256): " + "; ".join(
        f"{x['model']} {x['fp32_images_per_s']:.0f} → {x['amp_images_per_s']:.0f} img/s ({x['amp_speedup']:.2f}×)"
        for x in g["amp"]) + "."]
    return "\n".join(lines)


def semi_block() -> str:
    r = _load("semi")
    if r is None:
        return "_No semi-supervised run recorded yet: run `python bench/semi.py`._"
    n = len(r["seeds"])
    lines = [f"Measured with `{r['command']}` on {_machine(r['machine'])}: {r['data']}, {r['model']}, "
             f"{r['epochs']} epochs, test split, mean ± sd over seeds {', '.join(map(str, r['seeds']))} (each seed "
             "draws its own labelled subset). Each method uses the same labelled subset as the supervised baseline "
             "of its seed plus the rest of the training images without labels; a gain is the mean of the per-seed "
             f"gains, with the number of seeds (of {n}) on which it was above zero.", "",
             "| labels | method | AUC | ACC | AUC gain | ACC gain | time |", "|---|---|---|---|---|---|---|"]
    for f, rows in r["fractions"].items():
        for name, x in rows.items():
            gain = (f"{x['auc_gain']:+.3f} ({x['auc_wins']}/{n}) | {x['acc_gain']:+.3f} ({x['acc_wins']}/{n})"
                    if "auc_gain" in x else "– | –")
            lines.append(f"| {float(f):.0%} | {name} | {x['auc']:.3f} ± {x['auc_sd']:.3f} | "
                         f"{x['acc']:.3f} ± {x['acc_sd']:.3f} | {gain} | {x['seconds']:.0f} s |")
    return "\n".join(lines)


def fuzz_block() -> str:
    r = _load("fuzz")
    if r is None:
        return "not yet run"
    t = r["total"]
    fails = "no reader raised anything but a medcls error" if not t["unique_failures"] else \
        f"{t['unique_failures']} kinds of failure (see bench/results/fuzz.json)"
    return (f"{t['executions']:,} mutants ({r['examples_per_source']:,} per source file) in {t['seconds']:.0f} s, "
            f"{fails}, the slowest read {max(x['slowest'] for x in r['sources']):.2f} s, peak memory "
            f"{t['peak_rss_mib']} MiB "
            f"(`{r['command'].strip()}` on {_machine(r['machine'])})")


def explain_block() -> str:
    r = _load("explain")
    if r is None:
        return "_No explanation run recorded yet: run `python bench/explain.py`._"
    trained = f"{r['epochs']} epochs" if r.get("epochs") else "`medcls train` defaults"
    lines = [f"Measured with `{r['command']}` on {_machine(r['machine'])}; models trained from scratch with "
             f"{trained}, maps of the predicted class on the first {r['rows'][0]['images']} test images. Deletion AUC "
             "(lower is more faithful; mean ± sd over images) and milliseconds per map, beside a plain forward pass; "
             "ρ: Spearman rank correlation of Grad-CAM maps, trained vs re-initialised weights (low is sane).", "",
             "| data | model | test AUC | Grad-CAM | Grad-CAM++ | occlusion | random blobs | random pixels | ρ | "
             "ms per map (Grad-CAM / ++ / occlusion) | forward ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        m = x["methods"]
        cells = " | ".join(f"{m[k]['deletion_auc']:.3f} ± {m[k]['deletion_auc_sd']:.3f}"
                           for k in ("gradcam", "gradcam++", "occlusion", "random_smooth", "random"))
        ms = " / ".join(f"{m[k]['ms_per_map']:.1f}" for k in ("gradcam", "gradcam++", "occlusion"))
        lines.append(f"| {x['dataset']} | {x['model']} | {x['test_auc']:.3f} | {cells} | "
                     f"{x['randomisation_rho']:.2f} | {ms} | {x['forward_ms_per_image']:.2f} |")
    return "\n".join(lines)


def serve_block() -> str:
    r = _load("serve")
    if r is None:
        return "_No load test recorded yet: run `python bench/serve.py`._"
    base = {x["clients"]: x["requests_per_s"] for x in r["rows"] if x["config"] == "plain FastAPI"}
    lines = [f"Measured with `{r['command']}` on {_machine(r['machine'])}: {r['requests']} requests of a 28-px "
             "PNG per row from N concurrent clients on loopback (clients and server share the cores); ratio: "
             "requests/s against the plain FastAPI endpoint at the same concurrency. Errors: "
             f"{sum(x['errors'] for x in r['rows'])}.", "",
             "| server | clients | req/s | p50 ms | p95 ms | p99 ms | ratio |", "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        ratio = x["requests_per_s"] / base[x["clients"]] if base.get(x["clients"]) else float("nan")
        lines.append(f"| {x['config']} | {x['clients']} | {x['requests_per_s']:.1f} | {x['p50_ms']:.1f} | "
                     f"{x['p95_ms']:.1f} | {x['p99_ms']:.1f} | {ratio:.2f}× |")
    return "\n".join(lines)


def volume_block() -> str:
    r = _load("volume_speed")
    if r is None:
        return "_No volume speed run recorded yet: run `python bench/volume_speed.py`._"
    lines = [f"`{r['command']}` on {_machine(r['machine'])} (fp32 peak {r['peak_gflops']:.0f} GFLOP/s): training "
             "volumes/s of `medcls train`'s step (3-D augmentation included) beside a plain PyTorch step on the same "
             "model and batch, inference volumes/s at the batch `medcls predict` uses and at the best batch "
             "measured, and the peak memory of a training process at the default batch.", "",
             "| model | size | batch | train vol/s | plain vol/s | ratio | % of peak | infer vol/s (predict's batch) "
             "| infer vol/s (best batch) | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    from medcls.infer import EVAL_BATCH_VOXELS

    for x in r["rows"]:
        ours = str(max(1, min(256, EVAL_BATCH_VOXELS // x["size"] ** 3)))
        at = f"{x['infer'][ours]:.1f} (b{ours})" if ours in x["infer"] else "–"
        best = max(x["infer"], key=x["infer"].get)
        lines.append(f"| {x['model']} | {x['size']}³ | {x['batch']} | {x['train_ours']:.2f} | {x['train_plain']:.2f} "
                     f"| {x['ratio']:.2f}× | {x['train_peak_pct']:.0f} % | {at} | {x['infer'][best]:.1f} (b{best}) "
                     f"| {x['peak_rss_gb']:.1f} GB |")
    return "\n".join(lines)


BLOCKS = {"accuracy": accuracy_block, "speed": speed_block, "semi": semi_block, "fuzz": fuzz_block,
          "explain": explain_block, "serve": serve_block, "volume": volume_block}


def render(text: str) -> str:
    for name, fn in BLOCKS.items():
        a, b = MARK.format(name=name), END.format(name=name)
        if a not in text or b not in text:
            raise SystemExit(f"README.md lacks the markers {a} ... {b}")
        head, rest = text.split(a, 1)
        _, tail = rest.split(b, 1)
        text = f"{head}{a}\n{fn()}\n{b}{tail}"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    cur = README.read_text()
    new = render(cur)
    if a.check:
        if new != cur:
            print("README.md tables differ from bench/results/*.json: run python bench/report.py")
            return 1
        return 0
    README.write_text(new)
    print("README.md tables updated from bench/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
