"""An HTML page of search results: query and result thumbnails, scores, and heat maps of what a
query and a result share.

The heat maps come from the model's ``intersection_masks(images, texts)`` on the cross pairs:
(result image, query text) shows which patches of the result match the query's words, and
(query image, result text) shows which of the result's words match the query's picture.  A patch
or token over the model's threshold is drawn strong, the rest faint.  Images are embedded as data
URIs, so the page is one self-contained file.

A query may come with a ``Target``, the stored document it should find: that hit is marked with
a badge, its rank is shown (a row under the top k when it ranked lower), and a table at the top
of the page lists every query's target rank.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
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


@dataclass
class Target:
    """The stored document a query should find (for the demo: the query item's other view) and
    where the search ranked it: ``rank`` is 1-based, None when it was not among the ``depth``
    hits searched; ``hit`` is its Hit when found."""
    id: str
    depth: int
    rank: Optional[int] = None
    hit: Optional[object] = None
    label: str = "its other view"

    @classmethod
    def find(cls, doc_id: str, hits: Sequence, label: str = "its other view") -> "Target":
        """Locate ``doc_id`` in ``hits`` (best first, as deep as searched)."""
        for r, h in enumerate(hits, 1):
            if h.id == doc_id:
                return cls(doc_id, len(hits), r, h, label)
        return cls(doc_id, len(hits), None, None, label)

    @property
    def score(self) -> Optional[float]:
        return None if self.hit is None else self.hit.score

    def verdict(self) -> str:
        """One line, e.g. "its other view: rank 1 (score 0.812)"."""
        if self.rank is None:
            return f"{self.label}: not in the top {self.depth}"
        return f"{self.label}: rank {self.rank} (score {self.score:.3f})"


def _query_head(qi: int, query, label: str, target: Optional[Target], why, ma, mb) -> str:
    """The query's title, image and text, the verdict on its target and the notes on the masks."""
    head = f"Query {qi + 1}" + (f": {html.escape(label)}" if label else "")
    parts = [f'<section id="q{qi + 1}"><h2>{head}</h2><div class="q">']
    if query.image is not None:
        parts.append(f'<img src="{_data_uri(_square(query.image))}" alt="query image">')
    parts.append(f'<p class="qt">{html.escape(query.text or "(image only)")}</p></div>')
    if target is not None:
        ok = "ok" if target.rank == 1 else "near" if target.rank is not None else "miss"
        parts.append(f'<p class="verdict {ok}">{html.escape(target.verdict())}</p>')
    notes = [w for w in why if w]
    for name, m in (("result image x query text", ma), ("query image x result text", mb)):
        if m is not None:
            src = "from training" if m.thresholds_source == "model" else "estimated on these pairs"
            notes.append(f"{name}: thresholds text {m.tau_text:.3f}, image {m.tau_image:.3f} "
                         f"({src})")
    parts.extend(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return "".join(parts)


def _query_block(qi: int, query, hits, model, cache: dict, label: str = "",
                 target: Optional[Target] = None) -> str:
    shown = list(enumerate(hits, 1))
    if target is not None and target.rank is not None and target.rank > len(hits):
        shown.append((target.rank, target.hit))   # the expected document, below the top k
    res_imgs = [_load(h.image_uri, cache) if h.image_uri else None for _, h in shown]
    # Cross pairs: (result image, query text) and (query image, result text).
    a_idx = [i for i, im in enumerate(res_imgs) if im is not None and query.text]
    b_idx = [i for i, (_, h) in enumerate(shown) if h.text and query.image is not None]
    ma, why_a = _masks(model, [res_imgs[i] for i in a_idx], [query.text] * len(a_idx))
    mb, why_b = _masks(model, [query.image] * len(b_idx), [shown[i][1].text for i in b_idx])
    parts = [_query_head(qi, query, label, target, (why_a, why_b), ma, mb)]
    parts.append('<table><tr><th>#</th><th>score</th><th>result</th><th>result image &times; '
                 'query text</th><th>query image &times; result text</th><th>text</th>'
                 '<th>source / id</th></tr>')
    for i, (rank, h) in enumerate(shown):
        if rank > len(hits) and i == len(hits):
            parts.append('<tr class="gap"><td colspan="7">&hellip;</td></tr>')
        mark = target.label if target is not None and h.id == target.id else ""
        parts.append(_row(rank, h, res_imgs[i], query, ma, a_idx.index(i) if i in a_idx else None,
                          mb, b_idx.index(i) if i in b_idx else None, mark))
    parts.append("</table></section>")
    return "".join(parts)


def _row(rank, h, img, query, ma, ka, mb, kb, mark: str = "") -> str:
    """One result row; ka / kb: the row's index in the two mask batches (None: no such pair)."""
    thumb = f'<img src="{_data_uri(_square(img))}">' if img is not None else "&mdash;"
    heat_a = heat_b = "&mdash;"
    text = html.escape(h.text or "(image only)")
    if ma is not None and ka is not None and ma.grid:
        over = heat_overlay(img, ma.patch_scores[ka], ma.patch_masks[ka], ma.grid)
        words = _token_html(ma.tokens[ka], ma.token_scores[ka], ma.token_masks[ka])
        heat_a = f'<img src="{_data_uri(over)}"><br>{words}'
    if mb is not None and kb is not None:
        if mb.grid:
            over = heat_overlay(query.image, mb.patch_scores[kb], mb.patch_masks[kb], mb.grid)
            heat_b = f'<img src="{_data_uri(over)}">'
        text = _token_html(mb.tokens[kb], mb.token_scores[kb], mb.token_masks[kb])
    badge = f'<br><span class="badge">{html.escape(mark)}</span>' if mark else ""
    cls = ' class="target"' if mark else ""
    return (f"<tr{cls}><td>{rank}</td><td>{h.score:.3f}{badge}</td><td>{thumb}</td>"
            f"<td>{heat_a}</td><td>{heat_b}</td><td class='t'>{text}</td>"
            f"<td class='s'>{html.escape(h.source)}<br><code>{html.escape(h.id[:12])}</code>"
            f"</td></tr>")


_CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:4px;vertical-align:top}td.t{max-width:28em;font-size:90%}
td.s{font-size:80%;color:#555}.q{display:flex;gap:1em;align-items:center}.qt{font-size:120%}
.note{color:#a60}img{width:THUMBpx;height:THUMBpx;object-fit:contain}
tr.target td{background:#eef8ee}.badge{display:inline-block;margin-top:4px;padding:1px 6px;
border-radius:8px;background:#2a7d2a;color:#fff;font-size:80%;white-space:nowrap}
.verdict{font-weight:bold}.verdict.ok{color:#2a7d2a}.verdict.near{color:#a60}
.verdict.miss{color:#b22}tr.gap td{text-align:center;color:#888}
table.summary td{padding:2px 8px}""".replace("THUMB", str(THUMB))


def _summary(queries: Sequence, labels: Sequence, targets: Sequence) -> str:
    """A table of the queries that have a target: what each is and where its target ranked."""
    rows = []
    for i, (q, label, t) in enumerate(zip(queries, labels, targets)):
        if t is None:
            continue
        where = f"not in the top {t.depth}" if t.rank is None else str(t.rank)
        score = "" if t.score is None else f"{t.score:.3f}"
        rows.append(f'<tr><td><a href="#q{i + 1}">{i + 1}</a></td><td>{q.kind}</td>'
                    f"<td>{html.escape(label)}</td><td>{where}</td><td>{score}</td></tr>")
    if not rows:
        return ""
    found = sum(t is not None and t.rank == 1 for t in targets)
    n = sum(t is not None for t in targets)
    return (f"<h2>Where each query found {html.escape(_targets_label(targets))}</h2>"
            f"<p>{found} of {n} at rank 1.</p><table class='summary'><tr><th>query</th>"
            f"<th>kind</th><th>what</th><th>rank</th><th>score</th></tr>{''.join(rows)}</table>")


def _targets_label(targets: Sequence) -> str:
    labels = {t.label for t in targets if t is not None}
    return labels.pop() if len(labels) == 1 else "the expected document"


def write_report(path, queries: Sequence, results: Sequence, model=None,
                 title: str = "solar search", labels: Optional[Sequence[str]] = None,
                 targets: Optional[Sequence[Optional[Target]]] = None,
                 intro: str = "") -> Path:
    """Write the HTML page to ``path``.

    queries: Documents (solar_milvus.embedding.Document); results: one list of Hit per query
    (the rows shown); model: the encoder (for intersection_masks; None leaves the heat maps out);
    labels: a line per query saying what it is; targets: per query the Target it should find
    (or None): its hit is marked, its rank shown, and a summary table heads the page;
    intro: a paragraph of plain text under the title.
    """
    n = len(queries)
    labels = list(labels) if labels is not None else [""] * n
    targets = list(targets) if targets is not None else [None] * n
    if not len(results) == len(labels) == len(targets) == n:
        raise ValueError(f"queries ({n}), results ({len(results)}), labels ({len(labels)}) and "
                         f"targets ({len(targets)}) differ in length")
    cache: dict = {}
    body = "".join(_query_block(i, q, hits, model, cache, labels[i], targets[i])
                   for i, (q, hits) in enumerate(zip(queries, results)))
    legend = ("<p>Heat maps: red marks image patches the model finds in the other document's "
              "text; highlighted words are those it finds in the other document's image. "
              "Strong colour: over the model's threshold.</p>")
    intro = f"<p>{html.escape(intro)}</p>" if intro else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{intro}"
            f"{_summary(queries, labels, targets)}{legend}{body}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
