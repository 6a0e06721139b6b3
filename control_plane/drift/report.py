"""A drift report a person can read: reference against live distributions, one panel per
feature, with each feature's KS p-value and statistic and the MMD result. PNG (matplotlib,
Agg) or one self-contained HTML file (the figure inlined, plus a table)."""

from __future__ import annotations

import base64
import html
import io
import time

import numpy as np

from tracker_service.drift_features import FEATURES


def _figure(reference: np.ndarray, live: np.ndarray, result: dict):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cols = 4
    rows = -(-len(FEATURES) // cols)
    fig = Figure(figsize=(4.2 * cols, 2.9 * rows + 0.8), dpi=90)
    feats = result["detectors"]["ks"]["features"]
    threshold = result["detectors"]["ks"]["threshold"]
    mmd = result["detectors"]["mmd"]
    verdict = "DRIFT" if result["drift"] else "no drift"
    fig.suptitle(f"{result['model']} v{result['version']}: {verdict} - reference "
                 f"{result['n_reference']} vs live {result['n_live']} samples; MMD p="
                 f"{mmd['p_value']:.3g} (MMD\u00b2 {mmd['distance']:.3g}); KS threshold "
                 f"{threshold:.2g} per feature", fontsize=11,
                 color="firebrick" if result["drift"] else "black")
    for i, name in enumerate(FEATURES):
        ax = fig.add_subplot(rows, cols, i + 1)
        r, lv = reference[:, i], live[:, i]
        lo, hi = float(min(r.min(), lv.min())), float(max(r.max(), lv.max()))
        if hi <= lo:
            hi = lo + 1.0
        bins = np.linspace(lo, hi, 31)
        ax.hist(r, bins=bins, density=True, alpha=0.55, color="tab:blue", label="reference")
        ax.hist(lv, bins=bins, density=True, alpha=0.55, color="tab:orange", label="live")
        f = feats[name]
        bad = f["p_value"] < threshold
        ax.set_title(f"{name}: p={f['p_value']:.2g}, D={f['distance']:.2f}", fontsize=9,
                     color="firebrick" if bad else "black",
                     fontweight="bold" if bad else "normal")
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def render_png(reference: np.ndarray, live: np.ndarray, result: dict) -> bytes:
    buf = io.BytesIO()
    _figure(reference, live, result).savefig(buf, format="png")
    return buf.getvalue()


def render_html(reference: np.ndarray, live: np.ndarray, result: dict) -> bytes:
    png = base64.b64encode(render_png(reference, live, result)).decode()
    feats = result["detectors"]["ks"]["features"]
    threshold = result["detectors"]["ks"]["threshold"]
    mmd = result["detectors"]["mmd"]
    rows = []
    for i, name in enumerate(FEATURES):
        f = feats[name]
        flag = "drift" if f["p_value"] < threshold else ""
        rows.append(
            f"<tr class='{flag}'><td>{html.escape(name)}</td>"
            f"<td>{reference[:, i].mean():.4g}</td><td>{live[:, i].mean():.4g}</td>"
            f"<td>{f['distance']:.3f}</td><td>{f['p_value']:.3g}</td><td>{flag}</td></tr>")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result["checked_at"]))
    verdict = "drift detected" if result["drift"] else "no drift"
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>VisionGuard drift report</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
tr.drift{{background:#fdd}} img{{max-width:100%}}</style></head><body>
<h1>Drift report: {html.escape(result['model'])} version {html.escape(result['version'])}</h1>
<p><b>{verdict}</b> at {when}. Reference: the champion's evaluation data,
{result['n_reference']} samples; live: {result['n_live']} samples from gateways.
Family-wise level {result['p_value']}: KS per feature at {threshold:.3g} (Bonferroni),
MMD at {mmd['threshold']:.3g}: p = {mmd['p_value']:.3g}, MMD&sup2; = {mmd['distance']:.4g}
(threshold {mmd['distance_threshold']:.4g}).</p>
<table><tr><th>feature</th><th>reference mean</th><th>live mean</th><th>KS D</th>
<th>KS p</th><th></th></tr>
{''.join(rows)}
</table>
<p><img alt="reference vs live histograms per feature" src="data:image/png;base64,{png}"></p>
</body></html>
"""
    return doc.encode()
