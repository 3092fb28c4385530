"""Evaluation reports: metrics.json, report.md, a self-contained report.html (figures embedded as
base64 PNG and also written to figures/), figures drawn with matplotlib's Agg backend.

Figures hold real NIH images (held-out references, nearest training neighbours): reports go to
git-ignored folders (reports/) and are not to be committed.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

COLUMNS = [  # key, header, format, how to read
    ("fid", "FID", "{:.2f}", "lower is better; biased upwards at this n: a perfect model scores the real floor's FID"),
    ("fid_inf", "FID∞", "{:.2f}", "FID extrapolated to infinitely many samples (Chong & Forsyth 2020)"),
    ("kid", "KID ×1e3", None, "unbiased; ~0 = same distribution"),
    ("fid_cxr", "FID (cxr)", "{:.2f}", "FID on the finding classifier's features; comparable within one table only"),
    ("kid_cxr", "KID ×1e3 (cxr)", None, "KID on the finding classifier's features"),
    ("swd", "SWD ×1e3", "{:.1f}", "Laplacian-pyramid patches; lower is better"),
    ("spectrum", "Spectrum dist. (bias)", None, "decades of high-frequency power off; bias < 0 = blur, > 0 = noise"),
    ("precision", "Precision", "{:.3f}", "fidelity; real floor ≈ its value"),
    ("recall", "Recall", "{:.3f}", "mode coverage; collapse → 0"),
    ("ms_ssim", "MS-SSIM", "{:.3f}", "within-set similarity; higher than real = less diverse"),
    ("memorised", "Memorised (pixel)", "{:.3f}", "share closer to a training image than 99 % of unseen real"),
    ("memorised_features", "Memorised (features)", "{:.3f}", "same in feature space"),
]


# Which way is better, per column with intervals: tie marks compare models on these.
DIRECTION = {"swd": "lower", "spectrum": "lower", "memorised": "lower", "memorised_features": "lower",
             "precision": "higher", "recall": "higher", "ms_ssim": "floor"}  # floor: closest to the real floor
BEST, TIE = "**", "≈"
LEGEND = ("Cells: value [95 % bootstrap interval]. Per column, **bold** = the best model (MS-SSIM: the closest to "
          "the real floor), ≈ = a model whose interval overlaps the best one's: a tie at this n, not a ranking; "
          "unmarked models are worse than the best beyond the intervals. FID and KID carry no interval and no mark "
          "(KID: ± its std over subsets).")


# Issue 16 item 5: with a few hundred training images diffusion models copy (Dar et al. 2024, arXiv
# 2402.01054). A model whose memorised share, in pixels or in features, exceeds the real floor's by
# more than this is not adopted as a default, whatever its SWD.
MEMORISATION_MARGIN = 0.05


def memorisation_gate(results, margin: float = MEMORISATION_MARGIN) -> dict:
    """{model row: {"adoptable": True | False | None, "why": [...]}} from a results dict (its "rows"
    and "reference_rows", the real floor first). False: memorised (pixel or features) > the floor's
    + `margin`; None: no memorised figure to judge by (the row or the floor lacks one)."""
    rows, refs = results["rows"], list(results.get("reference_rows") or [])
    floor = rows.get(refs[0], {}) if refs else {}
    out = {}
    for name, row in rows.items():
        if name in refs:
            continue
        checked, why = 0, []
        for key, label in (("memorised", "pixel"), ("memorised_features", "features")):
            value, base = row.get(key), floor.get(key)
            if _missing(value) or _missing(base):
                continue
            checked += 1
            if value > base + margin:
                why.append(f"{label} {value:.3f} > floor {base:.3f} + {margin:g}")
        out[name] = {"adoptable": (not why) if checked else None, "why": why}
    return out


def memorisation_gate_md(results, margin: float = MEMORISATION_MARGIN) -> str:
    """One line: which models may become a default by the memorisation gate."""
    gate = memorisation_gate(results, margin)
    if not gate:
        return ""
    parts = []
    for name, g in gate.items():
        if g["adoptable"] is None:
            parts.append(f"{name}: not judged (no memorised figure)")
        else:
            parts.append(f"{name}: {'passes' if g['adoptable'] else 'FAILS (' + '; '.join(g['why']) + ')'}")
    return (f"Default gate (memorised ≤ real floor + {margin:g}, pixels and features; a model that fails is not "
            "adopted as a default whatever its SWD): " + ", ".join(parts) + ".")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(row, key, fmt):
    ci = row.get(f"{key}_ci")
    if key == "spectrum":
        if "spectrum" not in row:
            return "–"
        fmt = "{:.3f}"
    if key in ("kid", "kid_cxr"):
        if key not in row:
            return "–"
        return f"{1e3 * row[key]:.2f} ± {1e3 * row[key + '_std']:.2f}"
    v = row.get(key)
    if _missing(v):
        return "–"
    text = fmt.format(v)
    if ci is not None and not any(_missing(c) for c in ci):
        text += f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
    if key == "spectrum":
        text += f" ({row.get('spectrum_bias', float('nan')):+.2f})"
    return text


def _distance_interval(ci, target):
    """The interval of |x - target| for x in ci."""
    lo, hi = abs(ci[0] - target), abs(ci[1] - target)
    return (0.0 if ci[0] <= target <= ci[1] else min(lo, hi)), max(lo, hi)


def column_ties(results) -> dict:
    """Per column with intervals and at least two models: {"best": [the model(s) with the best
    value], "tied": [the other models whose interval overlaps a best one's], "overlapping_pairs":
    [[a, b], ...] (every overlapping pair of models), "direction"}. Reference rows are never ranked."""
    from keras_cxr.bootstrap import intervals_overlap

    refs = set(results["reference_rows"])
    models = [k for k in results["rows"] if k not in refs]
    floor = results["rows"].get(results["reference_rows"][0], {}) if results["reference_rows"] else {}
    out = {}
    for key, direction in DIRECTION.items():
        have = [m for m in models if not _missing(results["rows"][m].get(key))
                and results["rows"][m].get(f"{key}_ci") is not None
                and not any(_missing(c) for c in results["rows"][m][f"{key}_ci"])]
        if len(have) < 2:
            continue
        value = {m: results["rows"][m][key] for m in have}
        ci = {m: tuple(results["rows"][m][f"{key}_ci"]) for m in have}
        if direction == "floor":
            if _missing(floor.get(key)):
                continue
            value = {m: abs(v - floor[key]) for m, v in value.items()}
            ci = {m: _distance_interval(c, floor[key]) for m, c in ci.items()}
        score = {m: (v if direction in ("lower", "floor") else -v) for m, v in value.items()}
        top = min(score.values())
        best = [m for m in have if score[m] == top]
        out[key] = {"best": best, "direction": direction,
                    "tied": [m for m in have if m not in best and any(intervals_overlap(ci[m], ci[b]) for b in best)],
                    "overlapping_pairs": [[a, b] for i, a in enumerate(have) for b in have[i + 1 :]
                                          if intervals_overlap(ci[a], ci[b])]}
    return out


def _mark(name, key, ties):
    t = ties.get(key)
    if not t:
        return None
    if name in t["best"]:
        return "best"
    return "tie" if name in t["tied"] else None


def _columns(results):
    rows = results["rows"].values()
    return [c for c in COLUMNS if any(c[0] in r for r in rows)]


def table_rows(results):
    """([(row name, [cell strings], [mark per cell: "best" | "tie" | None])], columns) in display
    order: models first, then the reference rows."""
    refs = results["reference_rows"]
    order = [k for k in results["rows"] if k not in refs] + refs
    cols = _columns(results)
    ties = results.get("ties")
    if ties is None:
        ties = column_ties(results)
    return [(name, [_fmt(results["rows"][name], k, f) for k, _, f, _ in cols],
             [_mark(name, k, ties) for k, _, _, _ in cols]) for name in order], cols


def _has_intervals(results) -> bool:
    return any(k.endswith("_ci") for r in results["rows"].values() for k in r)


def markdown_table(results, legend: bool = True) -> str:
    """The metric table; with `legend`, the line explaining intervals and tie marks under it."""
    rows, cols = table_rows(results)
    lines = ["| set | n | " + " | ".join(h for _, h, _, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for name, cells, marks in rows:
        cells = [f"{BEST}{c}{BEST}" if m == "best" else f"{TIE} {c}" if m == "tie" else c
                 for c, m in zip(cells, marks)]
        lines.append(f"| {name} | {results['rows'][name]['n_paired']} | " + " | ".join(cells) + " |")
    if legend and _has_intervals(results):
        lines += ["", LEGEND]
    return "\n".join(lines)


def html_table(results) -> str:
    rows, cols = table_rows(results)
    head = "".join(f"<th title='{html.escape(t)}'>{html.escape(h)}</th>" for _, h, _, t in cols)
    body = []
    refs = set(results["reference_rows"])

    def cell(c, m):
        if m == "best":
            return f"<td class='best'><b>{html.escape(c)}</b></td>"
        if m == "tie":
            return f"<td class='tie'>{TIE} {html.escape(c)}</td>"
        return f"<td>{html.escape(c)}</td>"

    for name, cells, marks in rows:
        cls = " class='ref'" if name in refs else ""
        body.append(f"<tr{cls}><td>{html.escape(name)}</td><td>{results['rows'][name]['n_paired']}</td>"
                    + "".join(cell(c, m) for c, m in zip(cells, marks)) + "</tr>")
    return f"<table><thead><tr><th>set</th><th>n</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --------------------------------------------------------------------------- figures
def _plt():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # headless by default; a notebook's inline backend stays
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(array_uint8, path) -> Path:
    from keras_cxr.grids import save_png as _save

    return Path(_save(np.asarray(array_uint8), path))


def sample_grid(images, path, cols=8, max_images=64) -> Path:
    from keras_cxr.grids import tile

    return save_png(tile(np.asarray(images)[:max_images], cols=cols), path)


def per_finding_grid(by_finding: dict, path, cols=8) -> Path:
    from keras_cxr.grids import labelled_rows

    names = list(by_finding)
    imgs = np.concatenate([np.asarray(by_finding[f])[:cols] for f in names])
    return save_png(labelled_rows(imgs, names, cols=cols), path)


def _line_figure(path, draw, xlabel, ylabel, title) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    draw(ax)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def spectrum_figure(spectra: dict, path) -> Path:
    def draw(ax):
        for name, spec in spectra.items():
            spec = np.asarray(spec)
            r = np.arange(len(spec))
            ax.plot(r[1:], np.log10(spec[1:] + 1e-12), label=name, lw=1.5 if "real" in name else 1.2,
                    ls="--" if "blurred" in name else "-")
        nyq = len(next(iter(spectra.values()))) - 1
        ax.axvspan(nyq // 2 + 0.5, nyq, color="0.9", zorder=0, label="distance measured here")

    return _line_figure(path, draw, "spatial frequency (cycles / image)", "log10 power",
                        "Radially averaged power spectrum")


def histogram_figure(sets: dict, path) -> Path:
    def draw(ax):
        bins = np.arange(257) - 0.5
        for name, images in sets.items():
            counts, _ = np.histogram(np.asarray(images).ravel(), bins=bins, density=True)
            ax.plot(np.arange(256), counts, label=name, lw=1.2)

    return _line_figure(path, draw, "pixel intensity (uint8)", "density", "Pixel-intensity histogram")


def nearest_figure(closest: dict, path, title="Generated (top) and nearest training image (bottom)") -> Path:
    plt = _plt()
    q, t, c = closest["query"], closest["train"], closest["correlation"]
    k = len(q)
    fig, axes = plt.subplots(2, max(k, 1), figsize=(1.4 * max(k, 1), 3.2), dpi=100, squeeze=False)
    for i in range(k):
        axes[0, i].imshow(q[i][..., 0], cmap="gray", vmin=0, vmax=255)
        axes[0, i].set_title(f"r={c[i]:.3f}", fontsize=7)
        axes[1, i].imshow(t[i][..., 0], cmap="gray", vmin=0, vmax=255)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def grids_figure(sets: dict, path, n=16) -> Path:
    from keras_cxr.grids import tile

    plt = _plt()
    k = len(sets)
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 3.0), dpi=100, squeeze=False)
    for ax, (name, images) in zip(axes[0], sets.items()):
        ax.imshow(tile(np.asarray(images)[:n], cols=4)[..., 0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------- documents
def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _label_fidelity_md(results):
    out = []
    for name, info in results["models_info"].items():
        lf = info.get("label_fidelity")
        if not info.get("conditional"):
            continue
        out.append(f"\n### Label fidelity: {name}\n")
        if lf is None:
            out.append(info.get("label_fidelity_note", "not measured"))
            continue
        out.append("| finding | AUROC on generated (for finding vs others) | classifier AUROC on real held-out | real positives |")
        out.append("|---|---|---|---|")
        for f, r in lf["per_finding"].items():
            g = r.get("generated_auroc")
            rr = r.get("real_auroc")
            out.append(f"| {f} | {_num(g)} | {_num(rr)} | {r.get('n_real_positive', '–')} |")
        out.append(f"| **mean** | {_num(lf['mean_generated_auroc'])} | {_num(lf['mean_real_auroc'])} | |")
    return "\n".join(out)


def _num(v, fmt="{:.3f}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return fmt.format(v)


def _header_md(results):
    c = results["counts"]
    ext = results["extractor"]
    lines = [
        f"- features: **{ext['name']}** — {ext['description']}" if ext else "- features: none (FID/KID/precision/recall skipped)",
        f"- real held-out split `{c['split']}`: all **{c.get('heldout_images')}** images"
        + (f" (capped by --max-real {c['max_real']})" if c.get("max_real") else "")
        + f": reference A = {c.get('n_reference', c['n_per_set'])}, floor B = **{c['n_per_set']}**; generated: "
        f"**{c['n_generated']}** per model (the first {c['n_per_set']} for the two-sample metrics, all for spectrum, "
        f"MS-SSIM and memorisation); SWD and precision / recall against A's first {c['n_per_set']}; training images "
        f"searched for memorisation: {c['n_train']}; image size {c['image_size']} px; seed {results['seed']}",
    ]
    floor = results["rows"].get(results["reference_rows"][0], {}) if results.get("reference_rows") else {}
    if not _missing(floor.get("fid")):
        inf = any("fid_inf" in r for r in results["rows"].values())
        lines.append(f"- FID at n = {c['n_per_set']} per set is biased upwards: a perfect generator scores about the real "
                     f"floor's {floor['fid']:.2f}, not 0"
                     + ("; FID∞ is the Chong & Forsyth (2020) extrapolation to infinitely many samples" if inf else
                        f"; FID∞ (Chong & Forsyth 2020) needs n / 5 >= 2 x the feature dimension, not extrapolated here"))
    boot = results.get("bootstrap")
    if boot:
        lines.append(f"- intervals: 95 % bootstrap, {boot['replicates']} replicates (seed {boot['seed']}) resampling the "
                     f"images of A and of every compared set; {boot['interval']}; SWD replicates on "
                     f"{boot['swd']['patches_per_image']} patches per image and {boot['swd']['directions']} directions")
    if results.get("classifier"):
        lines.append(f"- classifier: `{results['classifier']['path']}` (mean val AUROC "
                     f"{_num(results['classifier'].get('val_mean_auroc'))})")
    for w in results["warnings"]:
        lines.append(f"- **warning:** {w}")
    return "\n".join(lines)


HOW_TO_READ = (
    "How to read: every row is measured against real held-out set A. The *real floor* row (a disjoint real "
    "set B of the same size) is the best a perfect generator can reach at this sample size; the *blurred real* "
    "row shows what a Gaussian blur of σ=1 px alone costs. A model is good on a metric when it is close to the "
    "floor and far from the blurred row. Memorised: share of images closer to a training image than 99 % of "
    "unseen real images are (≈0.01 expected, noisy at small n: see the floor row; 1.0 = copies). Smooth, "
    "blurry images correlate well with many training images without copying any: read a blurry model's "
    "memorisation against the blurred-real row and check the nearest-neighbour figure."
)

_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
        "tr.ref{background:#f2f2f2;font-style:italic}img{max-width:100%;border:1px solid #ddd}"
        "figure{margin:1em 0}figcaption{font-size:12px;color:#555}")


def _inline(text: str) -> str:
    """Escaped HTML of one markdown line: **bold**, *emphasis*, `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"\*(.+?)\*", r"<em>\1</em>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _md_to_html_lines(md: str) -> str:
    """Tiny converter for the bullet / table / heading markdown written here."""
    out, table = [], []

    def flush():
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            out.append("<table>" + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip().strip('*'))}</td>" for c in r)
                                           + "</tr>" for r in rows) + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _write_docs(results, figures, out: Path, title: str) -> None:
    results["memorisation_gate"] = memorisation_gate(results)
    gate = memorisation_gate_md(results)
    body_md = [f"# {title}", "", _header_md(results), "", markdown_table(results), "", HOW_TO_READ, "", gate,
               _label_fidelity_md(results), ""]
    for name, (path, caption) in figures.items():
        body_md += [f"![{caption}](figures/{path.name})", f"*{caption}*", ""]
    (out / "report.md").write_text("\n".join(body_md), encoding="utf-8")

    figs_html = []
    for name, (path, caption) in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figs_html.append(f"<figure><a href='figures/{html.escape(path.name)}'><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'></a><figcaption>{html.escape(caption)}</figcaption></figure>")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><ul>{_md_to_html_lines(_header_md(results))}</ul>"
           f"{html_table(results)}{_inline(LEGEND).join(('<p style=font-size:12px>', '</p>')) if _has_intervals(results) else ''}"
           f"<p>{_inline(HOW_TO_READ)}</p><p>{_inline(gate)}</p>{_md_to_html_lines(_label_fidelity_md(results))}"
           f"{''.join(figs_html)}<p style='font-size:11px;color:#777'>Real images: NIH Clinical Center ChestX-ray14 "
           "(Wang et al., CVPR 2017). Research use only.</p></body></html>")
    (out / "report.html").write_text(doc, encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(_json_ready(results), indent=2), encoding="utf-8")


def _prepare_out(out) -> tuple[Path, Path]:
    """(hidden work folder beside `out`, its figures/): published to `out` by `_publish`."""
    from keras_cxr.fileio import work_folder

    work = work_folder(Path(out))
    figdir = work / "figures"
    figdir.mkdir()
    return work, figdir


def _publish(work: Path, out) -> Path:
    from keras_cxr.fileio import publish_folder

    publish_folder(work, Path(out), "report")
    return Path(out)


def write_evaluation_report(results, artefacts, out) -> Path:
    """One model: metrics.json, report.md, report.html, figures/*.png in `out`."""
    final, (out, fig) = out, _prepare_out(out)
    name = results["models"][0]
    samples = artefacts["samples"][name]
    figures = {"samples": (sample_grid(samples, fig / "samples.png"), f"{name}: generated samples (seed {results['seed']})")}
    pf = artefacts["per_finding"].get(name)
    if pf:
        figures["per_finding"] = (per_finding_grid(pf, fig / "per_finding.png"), f"{name}: samples per finding (one row each)")
    spectra = {k: v for k, v in results["spectra"].items() if k != "real B"}
    figures["spectrum"] = (spectrum_figure(spectra, fig / "spectrum.png"), "radial power spectrum: real vs generated")
    figures["histogram"] = (histogram_figure({"real (held-out A)": artefacts["real_a"], name: samples},
                                             fig / "histogram.png"), "pixel-intensity histogram")
    figures["nearest"] = (nearest_figure(artefacts["closest"][name], fig / "nearest_neighbours.png"),
                          "the 8 generated images closest to a training image (r = normalised correlation)")
    _write_docs(results, figures, out, f"keras-cxr evaluation: {name}")
    return _publish(out, final)


def write_compare_report(results, artefacts, out) -> Path:
    """Several models: one table (markdown + HTML), one figure of grids side by side, spectra."""
    final, (out, fig) = out, _prepare_out(out)
    names = results["models"]
    sets = {**{k: artefacts["samples"][k] for k in names}, "real (held-out B)": artefacts["real_b"]}
    figures = {"grids": (grids_figure(sets, fig / "grids.png"), "samples side by side (16 each, same seed)")}
    spectra = {k: v for k, v in results["spectra"].items() if k != "real B"}
    figures["spectrum"] = (spectrum_figure(spectra, fig / "spectrum.png"), "radial power spectra")
    figures["histogram"] = (histogram_figure({"real (held-out A)": artefacts["real_a"],
                                              **{k: artefacts["samples"][k] for k in names}}, fig / "histogram.png"),
                            "pixel-intensity histograms")
    for k in names:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in k)
        figures[f"nearest_{safe}"] = (nearest_figure(artefacts["closest"][k], fig / f"nearest_{safe}.png",
                                                     f"{k}: closest generated / training pairs"),
                                      f"{k}: the 8 generated images closest to a training image")
    _write_docs(results, figures, out, "keras-cxr comparison: " + ", ".join(names))
    return _publish(out, final)

