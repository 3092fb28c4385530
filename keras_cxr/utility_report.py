"""The report of `keras-cxr utility` (metrics.json, report.md, per-regime AUROC figures), beside
`keras_cxr.report`, the report of `keras-cxr compare`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _cell(d, key="auroc", lo="low", hi="high"):
    v = d.get(key)
    if v is None or not np.isfinite(v):
        return "n/a"
    mark = "" if d.get("reliable", True) else " †"
    if d.get(lo) is None or not np.isfinite(d.get(lo, np.nan)):
        return f"{v:.3f}{mark}"
    return f"{v:.3f} [{d[lo]:.2f}, {d[hi]:.2f}]{mark}"


def auroc_figure(name, scores, findings, path, color="C0"):
    """Per-finding AUROC with its 95 % interval (error bars), chance line, mean line; Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ys = np.arange(len(findings))[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(findings) + 1.6))
    for yk, f in zip(ys, findings):
        d = scores["per_finding"][f]
        if d["auroc"] is None or not np.isfinite(d["auroc"]):
            ax.text(0.5, yk, "n/a (no positive or no negative test image)", va="center", ha="center", fontsize=7,
                    color="0.4", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
            continue
        lo = d["low"] if np.isfinite(d["low"]) else d["auroc"]
        hi = d["high"] if np.isfinite(d["high"]) else d["auroc"]
        ax.errorbar(d["auroc"], yk, xerr=[[d["auroc"] - lo], [hi - d["auroc"]]], fmt="o", color=color, capsize=3,
                    mfc=color if d.get("reliable", True) else "white")
    ax.axvline(0.5, color="0.6", ls="--", lw=1, label="chance")
    m = scores["mean"]
    if m["auroc"] is not None and np.isfinite(m["auroc"]):
        ax.axvline(m["auroc"], color=color, lw=1.2, label=f"mean {m['auroc']:.3f}")
        if np.isfinite(m["low"]):
            ax.axvspan(m["low"], m["high"], color=color, alpha=0.12, label="mean 95 % CI")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{f} ({scores['per_finding'][f]['n_pos']})" for f in findings], fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.7, len(findings) - 0.3)
    ax.set_xlabel("AUROC on the real test split (95 % bootstrap CI); (n) = test positives;\n"
                  "hollow marker: too few positives or negatives for a reliable interval", fontsize=8)
    ax.set_title(f"{name}: {scores['train_images']} training images ({scores['synthetic_images']} synthetic)", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from keras_cxr.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _slug(name: str) -> str:
    return name.replace("+", "_plus_")


def markdown_report(results, figures) -> str:
    findings = results["findings"]
    regs = results["regime_order"]
    d, s = results["data"], results["settings"]
    lines = [f"# Utility of synthetic data: `{results['model']}`", "",
             "Does training on this generator's images help a chest X-ray finding classifier? The project's "
             "finding classifier is trained under each regime with the same architecture, seed, epochs and "
             "patient split, and scored on the REAL held-out test split.", "",
             f"- data: `{d['folder']}`; split {d['split']}; train {d['train_images']} / val {d['val_images']} / "
             f"test {d['test_images']} real images",
             *([f"- generator: `{g['path']}` ({g.get('model_class') or g.get('model')}, preset {g.get('preset')}, "
                f"{g.get('image_size')} px{'' if s['guidance'] is None else ', guidance ' + str(s['guidance'])})"]
               if (g := results.get("generator")) else []),
             f"- classifier: preset `{s['classifier_preset']}` {json.dumps(s['model_kwargs'], sort_keys=True)}, "
             f"{s['image_size']} px, batch {s['batch_size']}, up to {s['epochs']} epochs, early stopping on validation "
             f"AUROC (patience {s['patience']}, best epoch restored), seed {s['seed']}",
             f"- intervals: 95 % percentile bootstrap over test images ({s['n_boot']} replicates, seed {s['seed']}); "
             "Δ vs real: paired bootstrap on the same replicates", ""]
    if d["test_images"] < 2000:
        lines += [f"**Small test set ({d['test_images']} images): the intervals are wide and differences between "
                  "regimes of a few AUROC points are not resolved. Run on the full dataset for conclusions.**", ""]
    header = "| finding | test pos. | " + " | ".join(regs) + " |"
    lines += ["## AUROC per finding", "", header, "|---|---|" + "---|" * len(regs)]
    for f in findings:
        cells = [_cell(results["regimes"][r]["per_finding"][f]) for r in regs]
        lines.append(f"| {f} | {d['test_positives'][f]} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | | " + " | ".join(f"**{_cell(results['regimes'][r]['mean'])}**" for r in regs) + " |")
    if "real" in results["regimes"]:
        cells = []
        for r in regs:
            dv = results["regimes"][r].get("delta_vs_real")
            cells.append("–" if dv is None else (f"{dv['delta']:+.3f} [{dv['low']:+.2f}, {dv['high']:+.2f}]"
                                                 if np.isfinite(dv["delta"]) else "n/a"))
        lines.append("| Δ mean vs real | | " + " | ".join(cells) + " |")
    lines.append("| training images (synthetic) | | " + " | ".join(
        f"{results['regimes'][r]['train_images']} ({results['regimes'][r]['synthetic_images']})" for r in regs) + " |")
    lines.append("| epochs run (best) | | " + " | ".join(
        f"{results['regimes'][r]['epochs_run']} ({results['regimes'][r].get('best_epoch', '–')})" for r in regs) + " |")
    lines.append("")
    from keras_cxr.bootstrap import MIN_CLASS_COUNT

    few = [f for f in findings if np.isfinite(results["regimes"][regs[0]]["per_finding"][f]["auroc"])
           and not results["regimes"][regs[0]]["per_finding"][f]["reliable"]]
    if few:
        lines += [f"† fewer than {MIN_CLASS_COUNT} positive (or negative) test images ({', '.join(few)}): the "
                  "bootstrap interval understates the uncertainty (one positive ranked first gives [1.00, 1.00]). "
                  "These findings are still in the mean.", ""]
    if results["excluded_findings"]:
        lines += [f"AUROC n/a (no positive or no negative test image; excluded from the mean): "
                  f"{', '.join(results['excluded_findings'])}.", ""]
    if "top_up" in results:
        t = results["top_up"]
        how = " (default: median training count)" if t["target_default"] else ""
        lines += ["## Rare-finding top-up", "",
                  f"Target count {t['target_count']}{how}: findings with fewer training positives get the difference "
                  f"as extra images ({t['added_images']} in all) whose label vectors are real training vectors "
                  "containing that finding. `real+synthetic` generates them; `real+oversampled` repeats the real "
                  "images they came from (same labels, same count: only the pixels differ).", "",
                  "| finding | real | added | after |", "|---|---|---|---|"]
        for f in findings:
            pf = t["per_finding"][f]
            lines.append(f"| {f} | {pf['real']} | {pf['added']} | {pf['after']} |")
        if t["skipped"]:
            lines.append(f"\nNo training positive, not topped up: {', '.join(t['skipped'])}.")
        lines.append("")
    if "label_sampling" in results:
        c = results["label_sampling"]["check"]
        n = results["label_sampling"]["independent_per_finding_baseline"]
        lines += ["## Label vectors of the synthetic set (co-occurrence check)", "",
                  "TSTR label vectors are whole real training label vectors drawn with replacement, so findings keep "
                  "their co-occurrences. Check against the real training labels (z = difference in units of the "
                  "sampling noise of n draws; PMI = pointwise mutual information of finding pairs):", "",
                  "| label sampler | max abs Δ joint freq. | max z | PMI MAE | pairs lost | findings / image | consistent |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in (("empirical joint (used)", c), ("independent per finding (naive)", n)):
            lines.append(f"| {name} | {r['max_abs_joint_diff']:.4f} | {r['max_z']:.1f} | "
                         f"{'n/a' if r['pmi_mae'] is None or not np.isfinite(r['pmi_mae']) else format(r['pmi_mae'], '.3f')} | "
                         f"{len(r['pairs_lost'])} | {r['mean_findings_per_image']['generated']:.3f} "
                         f"(real {r['mean_findings_per_image']['real']:.3f}) | {'yes' if r['consistent'] else 'no'} |")
        lines.append("")
    lines += ["## How to read", "",
              "- `real`: baseline. `synthetic` (TSTR) close to `real` means the generator's images carry the "
              "findings' visual signal; near 0.5 means they do not (a generator of constant images trains a classifier no better than chance).",
              "- `real+synthetic` above `real+oversampled` (not only above `real`) is the evidence that generation "
              "balances rare findings better than repeating real images. Look at the Δ interval: if it contains 0 "
              "the data cannot tell the regimes apart.",
              "- Findings with few test positives have very wide intervals; the mean is over findings with both "
              "classes in the test split.", ""]
    for name, (path, caption) in figures.items():
        lines += [f"![{caption}](figures/{path.name})", f"*{caption}*", ""]
    lines += ["Real images: NIH Clinical Center ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC; "
              "Wang et al., CVPR 2017). Research use only, not for diagnosis.", ""]
    return "\n".join(lines)


def write_report(results, out) -> Path:
    """metrics.json, report.md and figures/auroc_<regime>.png in `out` (each file written atomically)."""
    out = Path(out)
    figures = {}
    for k, name in enumerate(results["regime_order"]):
        path = auroc_figure(name, results["regimes"][name], results["findings"],
                            out / "figures" / f"auroc_{_slug(name)}.png", color=f"C{k}")
        figures[name] = (path, f"{name}: AUROC per finding on the real test split, 95 % bootstrap CI")
    results["figures"] = {k: f"figures/{p.name}" for k, (p, _) in figures.items()}
    from keras_cxr.fileio import write_text

    write_text(out / "metrics.json", json.dumps(_json_ready(results), indent=2))
    write_text(out / "report.md", markdown_report(results, figures))
    return out
