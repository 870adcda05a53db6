"""A self-contained HTML report of a run: R@K table, training curves, ranked query results, and
photos with the detector's boxes drawn over them.

Everything is inlined (plots as base64 PNG, scenes as SVG, photos as downscaled base64 JPEG
inside SVG), so the file can be mailed or opened from anywhere without the run's directory.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "RECALL_COLUMNS",
    "extraction_figures",
    "image_tag",
    "photo_svg",
    "place_labels",
    "plot_training_curves",
    "scene_svg",
    "write_report",
]

RECALL_COLUMNS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")
# The table's two header rows: the direction over its three recalls, then each column's own name.
DIRECTIONS = (("text \u2192 image", 3), ("image \u2192 text", 3))
COLUMN_NAMES = ("R@1", "R@5", "R@10", "R@1", "R@5", "R@10", "rsum")
GLOSSARY = (
    "R@K: the share (%) of queries whose right answer is among the first K results (text \u2192 image: a "
    "caption finds its image; image \u2192 text: an image finds one of its captions). rsum: the sum of the six "
    "recalls (at most 600). Pairs scored: the (caption, image) pairs the match head scored."
)
LABEL_FONT_PX = 12  # box labels: large enough to read on a 320-pixel photo
LABEL_CHAR_PX = 0.62 * LABEL_FONT_PX  # a generous average glyph width of the sans-serif font
LABEL_PAD_PX = 2


def plot_training_curves(log_history: Sequence[Mapping], eval_title: str = "evaluation recall (%)") -> Optional[str]:
    """Training loss and eval R@K against the step, as a base64 PNG (None without any logged point).

    ``eval_title`` heads the recall plot: the split and setting the Trainer evaluated, which may
    differ from those of the report's table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [h for h in log_history if "eval_rsum" in h and "step" in h]
    if not losses and not evals:
        return None
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.6))
    if losses:
        steps, values = zip(*losses)
        ax_loss.plot(steps, values, color="#3465a4")
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
    for key, label in (("eval_t2i_r1", "text \u2192 image R@1"), ("eval_i2t_r1", "image \u2192 text R@1"),
                       ("eval_t2i_r5", "text \u2192 image R@5")):
        points = [(h["step"], h[key]) for h in evals if key in h]
        if points:
            steps, values = zip(*points)
            ax_eval.plot(steps, values, marker="o", label=label)
    ax_eval.set(xlabel="step", ylabel="recall (%)", ylim=(0, 100))
    ax_eval.set_title(eval_title, fontsize=10)
    if evals:
        ax_eval.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_PALETTE = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#666666")


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """The area shared by two ``(x, y, w, h)`` rectangles."""
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0.0) * max(dy, 0.0)


def place_labels(boxes: np.ndarray, labels: Sequence[str], width: int, height: int) -> List[Tuple[float, float, float, float]]:
    """Where each box's label goes, as the ``(x, y, w, h)`` of its background, inside the image.

    In order, each label takes the first place that no label placed before covers: just above its
    box, inside it from the top down, just below it (left- or right-aligned with the box), else the
    free place nearest to the box's top-left corner; with none free, the place it overlaps least.
    ``boxes`` are ``[N, 4]`` pixel corners (x1, y1, x2, y2).
    """
    placed: List[Tuple[float, float, float, float]] = []
    h = LABEL_FONT_PX + 2 * LABEL_PAD_PX
    for (x1, y1, x2, y2), label in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels):
        w = min(len(label) * LABEL_CHAR_PX + 2 * LABEL_PAD_PX, width)
        near = [y1 - h] + list(np.arange(y1, max(y2 - h, y1) + 1e-6, h)) + [y2]
        spots = [(x, y) for y in near for x in (x1, x2 - w)]
        grid = [(x, y) for y in np.arange(0, height - h + 1e-6, h / 2) for x in np.arange(0, width - w + 1e-6, h / 2)]
        spots += sorted(grid, key=lambda p: (p[0] - x1) ** 2 + (p[1] - y1) ** 2)
        candidates = [
            (float(min(max(x, 0), width - w)), float(min(max(y, 0), max(height - h, 0))), w, h) for x, y in spots
        ]
        free = next((c for c in candidates if not any(_overlap(c, p) for p in placed)), None)
        placed.append(free or min(candidates, key=lambda c: sum(_overlap(c, p) for p in placed)))
    return placed


def _boxes_svg(relative_boxes: np.ndarray, labels: Sequence[str], width: int, height: int) -> List[str]:
    """SVG rectangles of boxes given as fractions of the image (x1/w, y1/h, x2/w, y2/h), then their labels
    (white on the box's colour, placed by :func:`place_labels` so that none hides another)."""
    boxes = np.asarray(relative_boxes, dtype=np.float64).reshape(-1, 4) * [width, height, width, height]
    labels = [labels[i] if i < len(labels) else "" for i in range(len(boxes))]
    colors = [_PALETTE[i % len(_PALETTE)] for i in range(len(boxes))]
    parts = [
        f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{max(x2 - x1, 0):.1f}" height="{max(y2 - y1, 0):.1f}" '
        f'fill="none" stroke="{color}" stroke-width="1.5"/>'
        for (x1, y1, x2, y2), color in zip(boxes, colors)
    ]
    for (x, y, w, h), label, color in zip(place_labels(boxes, labels, width, height), labels, colors):
        if label:
            parts.append(
                f'<g class="label"><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}" '
                f'fill-opacity="0.85"/><text x="{x + LABEL_PAD_PX:.1f}" y="{y + h - LABEL_PAD_PX - 2:.1f}" '
                f'font-size="{LABEL_FONT_PX}" fill="#fff">{html.escape(label)}</text></g>'
            )
    return parts


def scene_svg(features: np.ndarray, labels: Sequence[str], width: int = 220, height: int = 165) -> str:
    """Draw an image's regions from the geometry columns of its features (x1/w, y1/h, x2/w, y2/h, ...)."""
    parts = [f'<svg width="{width}" height="{height}" class="scene"><rect width="100%" height="100%" fill="#f4f4f0"/>']
    parts += _boxes_svg(np.asarray(features)[:, -6:-2], labels, width, height)
    parts.append("</svg>")
    return "".join(parts)


def photo_svg(image: np.ndarray, relative_boxes: np.ndarray, labels: Sequence[str], max_side: int = 320) -> str:
    """A photo (an RGB uint8 array, downscaled to ``max_side`` and inlined as JPEG) with boxes and labels
    drawn over it; ``relative_boxes`` are ``[N, 4]`` fractions of the photo's width and height, as the
    first four geometry columns of region features hold them."""
    from PIL import Image

    photo = Image.fromarray(np.asarray(image, dtype=np.uint8))
    scale = min(max_side / max(photo.size), 1.0)
    width, height = max(round(photo.width * scale), 1), max(round(photo.height * scale), 1)
    buffer = io.BytesIO()
    photo.resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    parts = [
        f'<svg width="{width}" height="{height}" class="photo">'
        f'<image width="{width}" height="{height}" href="data:image/jpeg;base64,{data}"/>'
    ]
    parts += _boxes_svg(relative_boxes, labels, width, height)
    parts.append("</svg>")
    return "".join(parts)


def _metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    directions = "".join(f'<th colspan="{span}">{name}</th>' for name, span in DIRECTIONS)
    head = (
        f'<tr><th rowspan="2">setting</th>{directions}<th rowspan="2">rsum</th><th rowspan="2">pairs scored</th></tr>'
        f'<tr>{"".join(f"<th>{name}</th>" for name in COLUMN_NAMES[:-1])}</tr>'
    )
    body = []
    for name, metrics in rows.items():
        cells = "".join(f"<td>{metrics[c]:.1f}</td>" if c in metrics else "<td>-</td>" for c in RECALL_COLUMNS)
        pairs = metrics.get("pairs_scored")
        count = "-" if pairs is None else f"{int(pairs):,}"
        body.append(f"<tr><td>{html.escape(name)}</td>{cells}<td>{count}</td></tr>")
    return f'<table class="metrics">{head}{"".join(body)}</table>'


def _query_section(query: Mapping) -> str:
    """One query and its ranked answers; items may carry ``visual`` (inline SVG/IMG) and ``correct``."""
    title = html.escape(query["title"])
    query_visual = query.get("visual", "")
    items = []
    for rank, item in enumerate(query["results"], start=1):
        mark = ' class="hit"' if item.get("correct") else ""
        visual = item.get("visual", "")
        items.append(
            f"<li{mark}><div>{visual}</div><div><b>#{rank}</b> {html.escape(item['label'])}"
            f"<br><small>score {item['score']:.3f}</small></div></li>"
        )
    return f'<section class="query"><h3>{title}</h3>{query_visual}<ol class="results">{"".join(items)}</ol></section>'


def extraction_figures(out_dir: str, images: str, max_boxes: int = 10) -> List[Dict[str, str]]:
    """One figure per photo that ``vinvl extract`` put in ``out_dir`` from ``images`` (its folder or
    list file): the photo with its first ``max_boxes`` regions and their class names, as the
    ``coco_ir`` loading script reads them back (boxes from the features' geometry columns)."""
    from ..data import load_corpus
    from ..vision.extract import list_images
    from ..vision.image import load_image

    paths = {entry.image_id: entry.path for entry in list_images(images)}
    corpus = load_corpus(out_dir, "test")
    figures = []
    for index, image_id in enumerate(corpus.image_ids):
        features, tags = corpus.features(index), corpus.tags[index]
        shown = min(max_boxes, len(tags))
        figures.append({
            "visual": photo_svg(load_image(paths[image_id]), features[:shown, -6:-2], tags[:shown]),
            "label": f"{image_id}: {len(tags)} regions, the first {shown} drawn ({', '.join(tags[:shown])})",
        })
    return figures


def _text(text: str) -> str:
    """Plain text as HTML, with `backquoted` spans (commands, file names) set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _photos_section(photos: Mapping) -> str:
    """A heading, a note (shown as a warning) and figures of ``{"visual", "label"}``."""
    figures = "".join(
        f'<figure>{item["visual"]}<figcaption>{html.escape(item["label"])}</figcaption></figure>' for item in photos["items"]
    )
    return (
        f'<h2>{html.escape(photos["title"])}</h2><p class="warning">{_text(photos.get("note", ""))}</p>'
        f'<div class="photos">{figures}</div>'
    )


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table.metrics{border-collapse:collapse;margin:1em 0}table.metrics td,table.metrics th{border:1px solid #ccc;padding:4px 8px;text-align:right}
table.metrics td:first-child{text-align:left}ol.results{display:flex;flex-wrap:wrap;gap:10px;list-style:none;padding:0}
ol.results li{border:2px solid #ddd;border-radius:6px;padding:6px;width:230px}ol.results li.hit{border-color:#4daf4a}
section.query{margin-bottom:1.5em}img.photo{max-width:220px;max-height:165px}pre{background:#f6f6f6;padding:8px}
p.warning{background:#fff4e0;border-left:4px solid #ff7f00;padding:6px 10px}div.photos{display:flex;flex-wrap:wrap;gap:12px}
div.photos figure{margin:0;width:320px}div.photos figcaption{font-size:12px}
figure.curves{margin:0}figure.curves figcaption{font-size:13px;color:#444;max-width:1000px}
code{background:#f0f0f0;padding:0 3px;border-radius:3px}
"""


def write_report(
    path: str,
    *,
    title: str,
    metrics: Mapping[str, Mapping[str, float]],
    metrics_setting: str = "",
    log_history: Sequence[Mapping] = (),
    eval_title: str = "evaluation recall (%)",
    eval_caption: str = "",
    queries: Sequence[Mapping] = (),
    queries_note: str = "",
    notes: Sequence[str] = (),
    photos: Optional[Mapping] = None,
) -> str:
    """Write the HTML report to ``path`` (atomically) and return the path.

    ``metrics_setting``: what the recall table measured (split, gallery, ranking), shown above it.
    ``eval_title`` / ``eval_caption``: of the recall curves logged during training, a short title drawn
    in the plot and a sentence under it, naming the split and setting they were measured on.
    ``queries_note``: what the queries' scores are, shown above them.
    ``photos``: an optional section after the queries, ``{"title", "note", "items": [{"visual", "label"}]}``.
    Notes may set commands in `backquotes`.
    """
    plot = plot_training_curves(log_history, eval_title)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    sections += [f"<p>{_text(n)}</p>" for n in notes]
    setting = f"<p>{_text(metrics_setting)}</p>" if metrics_setting else ""
    sections.append(f"<h2>Retrieval recall (%)</h2>{setting}{_metrics_table(metrics)}<p><small>{_text(GLOSSARY)}</small></p>")
    if plot:
        caption = f"<figcaption>{_text(eval_caption)}</figcaption>" if eval_caption else ""
        sections.append(
            f'<h2>Training</h2><figure class="curves"><img alt="training curves" src="data:image/png;base64,{plot}">'
            f"{caption}</figure>"
        )
    if queries:
        note = f"<p>{_text(queries_note)}</p>" if queries_note else ""
        sections.append(f"<h2>Queries</h2>{note}" + "".join(_query_section(q) for q in queries))
    if photos:
        sections.append(_photos_section(photos))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


def image_tag(path: str) -> str:
    """An inline <img> of a photo file, for corpora that ship their images."""
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "jpeg"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img class="photo" src="data:image/{"jpeg" if ext == "jpg" else ext};base64,{data}">'

