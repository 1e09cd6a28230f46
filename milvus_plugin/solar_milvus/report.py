"""An HTML page of search results: query and result thumbnails, scores, and heat maps of what a
query and a result share.

The heat maps come from the model's ``intersection_masks(images, texts)`` on the cross pairs:
(result image, query text) shows which patches of the result match the query's words, and
(query image, result text) shows which of the result's words match the query's picture.  A patch
or token over the model's threshold is drawn strong, the rest faint.  Images are embedded as data
URIs, so the page is one self-contained file.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Optional, Sequence

THUMB = 192


def _data_uri(img, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _square(img, size: int = THUMB):
    """Fit into a white size x size square, as the image towers see it."""
    from PIL import Image
    w, h = img.size
    s = size / max(w, h, 1)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(img.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC),
              ((size - nw) // 2, (size - nh) // 2))
    return out


def heat_overlay(img, scores, mask, grid) -> "object":
    """Patch scores (P,) on a (rows, cols) grid drawn over the squared image: red, strong where
    the mask is set (score over the threshold), faint elsewhere."""
    import numpy as np
    from PIL import Image
    base = _square(img)
    s = np.asarray(scores, dtype=np.float64).reshape(grid)
    m = np.asarray(mask, dtype=bool).reshape(grid)
    lo, hi = float(s.min()), float(s.max())
    norm = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    alpha = np.where(m, 0.25 + 0.45 * norm, 0.12 * norm)
    a = Image.fromarray(np.uint8(np.clip(alpha, 0, 1) * 255), "L").resize(base.size,
                                                                          Image.Resampling.BILINEAR)
    red = Image.new("RGB", base.size, (220, 20, 60))
    return Image.composite(red, base, a)


def _token_html(tokens, scores, mask) -> str:
    out = []
    for tok, sc, on in zip(tokens, list(scores), list(mask)):
        glue = tok.startswith("##")
        text = html.escape(tok[2:] if glue else tok)
        style = (f' style="background:rgba(220,20,60,{0.25 + 0.5 * _unit(sc, scores):.2f})"'
                 if bool(on) else "")
        out.append(("" if glue or not out else " ") + f'<span title="{float(sc):.3f}"{style}>'
                   f'{text}</span>')
    return "".join(out)


def _unit(x, xs) -> float:
    xs = [float(v) for v in xs]
    lo, hi = min(xs), max(xs)
    return (float(x) - lo) / (hi - lo) if hi > lo else 0.0


def _masks(model, images: list, texts: list) -> tuple[Optional[object], str]:
    """model.intersection_masks on complete pairs, or (None, why not)."""
    if not images:
        return None, ""
    fn = getattr(model, "intersection_masks", None)
    if fn is None:
        return None, "the model offers no intersection masks"
    try:
        return fn(images, texts), ""
    except Exception as err:  # noqa: BLE001 - the page is still useful without heat maps
        return None, f"no heat maps: the model's intersection_masks failed ({type(err).__name__}: {err})"


def _load(uri: str, cache: dict):
    if uri not in cache:
        from solar.data import load_image_uri
        try:
            cache[uri] = load_image_uri(uri)
        except (ValueError, OSError):
            cache[uri] = None
    return cache[uri]


def _query_block(qi: int, query, hits, model, cache: dict) -> str:
    res_imgs = [_load(h.image_uri, cache) if h.image_uri else None for h in hits]
    # Cross pairs: (result image, query text) and (query image, result text).
    a_idx = [i for i, im in enumerate(res_imgs) if im is not None and query.text]
    b_idx = [i for i, h in enumerate(hits) if h.text and query.image is not None]
    ma, why_a = _masks(model, [res_imgs[i] for i in a_idx], [query.text] * len(a_idx))
    mb, why_b = _masks(model, [query.image] * len(b_idx), [hits[i].text for i in b_idx])
    parts = [f'<section><h2>Query {qi + 1}</h2><div class="q">']
    if query.image is not None:
        parts.append(f'<img src="{_data_uri(_square(query.image))}" alt="query image">')
    parts.append(f'<p class="qt">{html.escape(query.text or "(image only)")}</p></div>')
    notes = [w for w in (why_a, why_b) if w]
    for label, m in (("result image x query text", ma), ("query image x result text", mb)):
        if m is not None:
            notes.append(f"{label}: thresholds text {m.tau_text:.3f}, image {m.tau_image:.3f} "
                         f"({'from training' if m.thresholds_source == 'model' else 'estimated on these pairs'})")
    if notes:
        parts.append("".join(f'<p class="note">{html.escape(n)}</p>' for n in notes))
    parts.append('<table><tr><th>#</th><th>score</th><th>result</th><th>result image &times; '
                 'query text</th><th>query image &times; result text</th><th>text</th>'
                 '<th>source / id</th></tr>')
    for r, h in enumerate(hits):
        parts.append(_row(r, h, res_imgs[r], query, ma, a_idx, mb, b_idx))
    parts.append("</table></section>")
    return "".join(parts)


def _row(r, h, img, query, ma, a_idx, mb, b_idx) -> str:
    thumb = f'<img src="{_data_uri(_square(img))}">' if img is not None else "&mdash;"
    heat_a = heat_b = "&mdash;"
    text = html.escape(h.text or "(image only)")
    if ma is not None and r in a_idx and ma.grid:
        k = a_idx.index(r)
        heat_a = (f'<img src="{_data_uri(heat_overlay(img, ma.patch_scores[k], ma.patch_masks[k], ma.grid))}">'
                  f'<br>{_token_html(ma.tokens[k], ma.token_scores[k], ma.token_masks[k])}')
    if mb is not None and r in b_idx:
        k = b_idx.index(r)
        if mb.grid:
            heat_b = f'<img src="{_data_uri(heat_overlay(query.image, mb.patch_scores[k], mb.patch_masks[k], mb.grid))}">'
        text = _token_html(mb.tokens[k], mb.token_scores[k], mb.token_masks[k])
    return (f"<tr><td>{r + 1}</td><td>{h.score:.3f}</td><td>{thumb}</td><td>{heat_a}</td>"
            f"<td>{heat_b}</td><td class='t'>{text}</td><td class='s'>{html.escape(h.source)}"
            f"<br><code>{html.escape(h.id[:12])}</code></td></tr>")


_CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:4px;vertical-align:top}td.t{max-width:28em;font-size:90%}
td.s{font-size:80%;color:#555}.q{display:flex;gap:1em;align-items:center}.qt{font-size:120%}
.note{color:#a60}img{width:THUMBpx;height:THUMBpx;object-fit:contain}""".replace("THUMB",
                                                                              str(THUMB))


def write_report(path, queries: Sequence, results: Sequence, model=None,
                 title: str = "solar search") -> Path:
    """Write the HTML page to ``path``.

    queries: Documents (solar_milvus.embedding.Document); results: one list of Hit per query;
    model: the encoder (for intersection_masks; None leaves the heat maps out).
    """
    if len(queries) != len(results):
        raise ValueError(f"queries ({len(queries)}) and results ({len(results)}) differ in length")
    cache: dict = {}
    body = "".join(_query_block(i, q, hits, model, cache)
                   for i, (q, hits) in enumerate(zip(queries, results)))
    legend = ("<p>Heat maps: red marks image patches the model finds in the other document's "
              "text; highlighted words are those it finds in the other document's image. "
              "Strong colour: over the model's threshold.</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{legend}"
            f"{body}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
