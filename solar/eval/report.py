"""Results tables: one row per model (or per method, mean and spread over seeds), in Markdown."""
from __future__ import annotations

import math
from typing import Sequence

SYM_COLS = ("R@1", "R@5", "R@10", "mR", "Precision", "Avg")
ASYM_COLS = (("text->document", "t->d"), ("image->document", "i->d"),
             ("image->text", "i->t"), ("text->image", "t->i"))


def flat(result: dict) -> dict:
    """One result dict -> {column: value} with the symmetric metrics and each task's R@1/5/10."""
    out = {k: result["sym"][k] for k in SYM_COLS if k in result.get("sym", {})}
    for k, v in result.get("sym", {}).items():
        if k.startswith("Precision["):
            out[k] = v
    for task, short in ASYM_COLS:
        for k in ("R@1", "R@5", "R@10"):
            if task in result.get("asym", {}):
                out[f"{short} {k}"] = result["asym"][task][k]
    if "asym_R@10_mean" in result:
        out["asym R@10"] = result["asym_R@10_mean"]
    return out


def aggregate(results: Sequence[dict]) -> dict:
    """Seeds of one method -> {column: (mean, sample std)} (std 0 for one seed)."""
    if not results:
        raise ValueError("aggregate needs at least one result")
    flats = [flat(r) for r in results]
    out = {}
    for k in flats[0]:
        vals = [f[k] for f in flats if k in f]
        m = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out[k] = (m, sd)
    return out


def _cell(v) -> str:
    if isinstance(v, tuple):
        m, sd = v
        return f"{m:.1f} ± {sd:.1f}"
    return f"{v:.1f}"


def markdown_table(rows: Sequence[tuple], columns: Sequence[str] = None) -> str:
    """rows: (label, {column: value or (mean, std)}) -> a Markdown table."""
    if not rows:
        raise ValueError("no rows to tabulate")
    columns = list(columns or [c for c in (*SYM_COLS, "asym R@10") if c in rows[0][1]])
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, vals in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(vals[c]) if c in vals else "–" for c in columns) + " |")
    return "\n".join(lines)


def asym_table(rows: Sequence[tuple]) -> str:
    """The asymmetric tasks' R@1/5/10 per model."""
    cols = [f"{s} {k}" for _, s in ASYM_COLS for k in ("R@1", "R@5", "R@10")]
    return markdown_table(rows, [c for c in cols if c in rows[0][1]])
