"""The report's HTML page: headline numbers, the figures, the CAM ablation table. No script, nothing remote."""

from __future__ import annotations

import html


def markdown_table(text: str) -> str:
    """The first pipe table of a markdown text as an HTML table (bold kept)."""
    import re

    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return "<p>(no table)</p>"
    cell = lambda s: re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s.strip()))  # noqa: E731
    rows = [[cell(c) for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(split: str, seg: dict, cams_metric: dict, ablation: str) -> str:
    s, p = seg["segmenter"], seg["pseudo_labels"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diclip report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 6px}}</style></head>
<body>
<h1>diclip report</h1>
<table id="headline"><tr><th></th><th>mIoU</th><th>pixel accuracy</th><th>split</th></tr>
<tr><td>pseudo-labels</td><td>{p['miou']:.3f}</td><td>{p['pixel_accuracy']:.3f}</td><td>{html.escape(split)}</td></tr>
<tr><td>pseudo-labels</td><td>{cams_metric['miou']:.3f}</td><td>{cams_metric['pixel_accuracy']:.3f}</td><td>{html.escape(cams_metric['split'])}</td></tr>
<tr><td>segmenter</td><td>{s['miou']:.3f}</td><td>{s['pixel_accuracy']:.3f}</td><td>{html.escape(split)}</td></tr></table>
<h2>Samples</h2><img id="samples" src="samples.png" alt="image, ground truth, CAMs, clusters, pseudo-label, prediction">
<p>Stage A clusters: each cluster's colour over the image at its size, outlined in white.</p>
<h2>Stage A: one object patch's row of R and P</h2><p>The largest object's most central patch (white square):
its row of stage A's R (CLIP grid) and P (the transition grid) over the image, beside the oracle's rows,
which spread the patch's mass evenly over its own label in the ground truth. VCE and RAR can only help
where the real rows stay on the object.</p><img id="rows" src="rows.png" alt="rows of R and P, stage A beside the oracle">
<h2>Per-class IoU</h2><img id="iou" src="iou.png" alt="per-class IoU bars">
<h2>Training</h2><img id="curves" src="curves.png" alt="training curves">
<h2>TSA cache samples</h2><img id="tsa" src="tsa_cache.png" alt="generated images above their masks">
<h2>CAM ablation</h2>{ablation}
</body></html>
"""
