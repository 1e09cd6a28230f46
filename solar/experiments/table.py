"""The results table: train every method on the same pairs, evaluate all checkpoints, aggregate.

Methods (each for every seed; docs/results.md has the measured table):
    score_fusion   the score-fusion model with untrained adapters/projections (no training)
    clip           score fusion trained with image-text contrastive loss ("+CL")
    gcl            score fusion trained with the GCL loss
    solar_s1       SOLAR stage 1
    solar_s12      SOLAR stage 1 + 2 (stage 2 starts from solar_s1 of the same seed)
Ablations of SOLAR stage 1+2, each trained by its registered recipe names (solar.train.ablations):
    no_mask                   stage 1 without the intersection mask (rho stays 1), then stage 2
    no_constructed_negatives  stage 2 without the mask-built negative views (from solar_s1)
    no_mined_negatives        stage 2 without the offline-mined negatives (from solar_s1)
and each of the project's deviations from the papers switched off (docs/method.md), one at a time:
    paper_stage1              stage 1 in the paper's form (GLA on means, no local alignment,
                              no composites, global mask scores), then the project's stage 2
    no_composites             stage 1 without composite supervision (and its thresholds)
    cls_readout               the embedding from the CLS output alone (the paper's readout)
    no_views                  stage 2 whose views differ from the anchor only by the masks
    no_s2_distill             stage 2 without the global distillation of the documents

Every method trains with the settings chosen on the val twin (docs/experiments.md): ``RECIPE_SET``
(learning rates of the baselines, the project's stage-1 and stage-2 options).

Every run is a ``solar.train.train`` call on the same seeded subset of the training split; a run
whose folder already holds a final model is reused, so an interrupted table resumes.  The
benchmark, evaluation and reports come from ``solar.eval``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

METHODS = ("score_fusion", "clip", "gcl", "solar_s1", "solar_s12")
# ablation -> (stage-1 recipe, stage-2 recipe); one with the plain "stage1" starts from solar_s1
ABLATION_RECIPES = {"no_mask": ("stage1-no-mask", "stage2"),
                    "no_constructed_negatives": ("stage1", "stage2-no-constructed"),
                    "no_mined_negatives": ("stage1", "stage2-no-mined")}
# ablation -> (stage-1 TrainConfig fields, stage-2 TrainConfig fields) replacing RECIPE_SET's;
# one with no stage-1 fields starts from solar_s1
DEVIATIONS_OFF = {
    "paper_stage1": ({"gla_form": "mean", "w_local": 0.0, "local_form": "pair",
                      "w_compose": 0.0, "compose_qda": False,
                      "model_set": {"mask_scores": "global", "readout": "cls+pooled"}}, {}),
    "no_composites": ({"w_compose": 0.0, "compose_qda": False}, {}),
    "cls_readout": ({"model_set": {"mask_scores": "local", "readout": "cls",
                                   "mask_context": "segments"}}, {}),
    "no_views": ({}, {"crop_views": 0.0, "token_drop": 0.0, "anchor_view": False}),
    "no_s2_distill": ({}, {"s2_distill": 0.0}),
}
ABLATIONS = tuple(ABLATION_RECIPES) + tuple(DEVIATIONS_OFF)
# TrainConfig fields per recipe, chosen on the val twin (docs/experiments.md: B-5, B-9, S1-4,
# S1-12, S2-2, S2-7); "model_set" holds ModelConfig fields of the starting preset.
RECIPE_SET = {
    "clip": {"lr": 3e-5},
    "gcl": {"lr": 3e-5},
    "stage1": {"batch_size": 64, "gla_form": "local", "w_local": 1.0, "local_form": "owner",
               "w_compose": 3.0, "compose_qda": True,
               "model_set": {"mask_scores": "local", "readout": "cls+pooled",
                             "mask_context": "segments"}},
    "stage2": {"crop_views": 0.3, "token_drop": 0.2, "anchor_view": True, "s2_distill": 1.0},
}
LABELS = {"score_fusion": "score fusion, untrained", "clip": "image-text contrastive (CL)",
          "gcl": "GCL", "solar_s1": "SOLAR stage 1", "solar_s12": "SOLAR stage 1+2",
          "no_mask": "SOLAR 1+2, no mask", "no_constructed_negatives": "SOLAR 1+2, no constructed negatives",
          "no_mined_negatives": "SOLAR 1+2, no mined negatives",
          "paper_stage1": "SOLAR 1+2, paper's stage 1", "cls_readout": "SOLAR 1+2, CLS readout",
          "no_views": "SOLAR 1+2, no view changes",
          "no_composites": "SOLAR 1+2, no composite supervision",
          "no_s2_distill": "SOLAR 1+2, no stage-2 distillation"}


@dataclass
class TableConfig:
    """out_dir: runs, results.json and table.md.  train_docs: seeded subset of the training split
    (None: all of it).  steps: optimizer steps per recipe.  model_overrides: ModelConfig fields
    of the starting presets (all methods share them).  train_set: extra TrainConfig fields
    for every run.  recipe_set: TrainConfig fields per recipe (default ``RECIPE_SET``; a
    "model_set" entry adds ModelConfig fields to that recipe's starting preset)."""
    out_dir: str = "out/results_table"
    seeds: tuple = (0, 1, 2)
    methods: tuple = METHODS
    ablations: tuple = ABLATIONS
    data: str = "clipart+emoji"
    train_docs: Optional[int] = None
    subset_seed: int = 0
    steps: dict = field(default_factory=lambda: {"clip": 400, "gcl": 400, "stage1": 400, "stage2": 100})
    batch_size: int = 32
    model_overrides: dict = field(default_factory=dict)
    train_set: dict = field(default_factory=dict)
    recipe_set: dict = field(default_factory=lambda: {k: dict(v) for k, v in RECIPE_SET.items()})
    cache_dir: Optional[str] = None
    bench_seed: int = 0
    bench_max_items: Optional[int] = None
    bench_split: str = "test"
    eval_batch_size: int = 64

    def __post_init__(self):
        self.seeds, self.methods, self.ablations = tuple(self.seeds), tuple(self.methods), tuple(self.ablations)
        bad = [m for m in self.methods if m not in METHODS] + [a for a in self.ablations if a not in ABLATIONS]
        if bad:
            raise ValueError(f"unknown methods/ablations {bad}; methods {METHODS}, ablations {ABLATIONS}")
        if not self.seeds:
            raise ValueError("give at least one seed")


PRESETS = {
    "cpu": lambda: TableConfig(),
    "cpu-short": lambda: TableConfig(out_dir="out/results_table_short",
                                     steps={"clip": 100, "gcl": 100, "stage1": 100, "stage2": 25}),
    "smoke": lambda: TableConfig(out_dir="out/results_table_smoke", seeds=(0,), train_docs=200,
                                 steps={"clip": 3, "gcl": 3, "stage1": 3, "stage2": 2},
                                 batch_size=16, bench_max_items=40,
                                 recipe_set={**RECIPE_SET,
                                             "stage1": {**RECIPE_SET["stage1"], "batch_size": 16}},
                                 model_overrides={"image_tower": {"kind": "efficientnet-lite0",
                                                                  "image_size": 128}}),
}


def train_pairs(cfg: TableConfig) -> list:
    """The seeded subset of the training split every method trains on."""
    from solar.train.config import TrainConfig
    from solar.train.loop import load_pairs
    pairs = load_pairs(TrainConfig(recipe="clip", data=cfg.data, split="train"))
    if cfg.train_docs is None or cfg.train_docs >= len(pairs):
        return pairs
    key = lambda p: hashlib.sha1(f"{cfg.subset_seed}:{p.id}".encode()).hexdigest()  # noqa: E731
    keep = {p.id for p in sorted(pairs, key=key)[: cfg.train_docs]}
    return [p for p in pairs if p.id in keep]


def _train(cfg: TableConfig, pairs, run: Path, log: Callable, **kw) -> Path:
    from solar.train import TrainConfig, train
    fields = {"data": cfg.data, "batch_size": cfg.batch_size, "cache_dir": cfg.cache_dir,
              **cfg.train_set, **kw}
    tc = TrainConfig(out_dir=str(run), progress=False, **fields)
    if (run / "model.safetensors").is_file() and _same_config(run, tc):
        log(f"reuse {run}")
        return run
    if (run / "train_config.json").is_file() and not _same_config(run, tc):
        raise ValueError(f"{run} holds a run with another training config; use another out_dir "
                         "or remove that run folder")
    t = time.perf_counter()
    summary = train(tc, pairs=pairs)
    log(f"trained {run.name}: {summary['steps']} steps, {time.perf_counter() - t:.0f} s, "
        f"loss {summary['losses'][0]:.3f} -> {summary['losses'][-1]:.3f}")
    return run


def _same_config(run: Path, tc) -> bool:
    """Whether the run folder was trained with ``tc`` (a field added since then counts as its
    default, so a new option does not invalidate finished runs)."""
    saved = json.loads((run / "train_config.json").read_text())
    want = json.loads(json.dumps(tc.to_dict(), default=str))
    for f in dataclasses.fields(tc):
        if f.name not in saved and f.name in want and not (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            d = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            saved[f.name] = json.loads(json.dumps(d, default=str))
    return {k: v for k, v in saved.items() if k != "out_dir"} == {k: v for k, v in want.items() if k != "out_dir"}


def _untrained(cfg: TableConfig, run: Path, seed: int) -> Path:
    from solar.model import build_model, preset, save_model
    if not (run / "config.json").is_file():
        save_model(build_model(preset("score-fusion-offline").replace(**cfg.model_overrides),
                               seed=seed), run)
    return run


def _runs_for_seed(cfg: TableConfig, pairs, seed: int, log: Callable) -> dict:
    """{method or ablation: checkpoint folder} for one seed."""
    root, st = Path(cfg.out_dir) / "runs", cfg.steps

    def tr(name, recipe, kind, extra=None, **kw):
        """Train ``recipe`` with the settings of ``kind`` (a recipe_set key), ``extra`` on top."""
        fields = {**cfg.recipe_set.get(kind, {}), **(extra or {})}
        model_set = fields.pop("model_set", {})
        if "model" not in kw:                              # starts from a preset
            kw["model_overrides"] = {**cfg.model_overrides, **model_set}
        return _train(cfg, pairs, root / f"{name}-seed{seed}", log, seed=seed, recipe=recipe,
                      steps=st[kind], **{**fields, **kw})
    out = {}
    if "score_fusion" in cfg.methods:
        out["score_fusion"] = _untrained(cfg, root / f"score_fusion-seed{seed}", seed)
    for m in ("clip", "gcl"):
        if m in cfg.methods:
            out[m] = tr(m, m, m)
    need_s1 = ({"solar_s1", "solar_s12"} & set(cfg.methods)
               or any(ABLATION_RECIPES[a][0] == "stage1" if a in ABLATION_RECIPES
                      else not DEVIATIONS_OFF[a][0] for a in cfg.ablations))
    if need_s1:
        s1 = tr("solar_s1", "stage1", "stage1")
        out["solar_s1"] = s1
        if "solar_s12" in cfg.methods:
            out["solar_s12"] = tr("solar_s12", "stage2", "stage2", model=str(s1))
    for a in cfg.ablations:
        if a in DEVIATIONS_OFF:
            f1, f2 = DEVIATIONS_OFF[a]
            s1a = tr(f"{a}_s1", "stage1", "stage1", f1) if f1 else out["solar_s1"]
            out[a] = tr(f"{a}_s12" if f1 else a, "stage2", "stage2", f2, model=str(s1a))
            continue
        r1, r2 = ABLATION_RECIPES[a]
        if r1 == "stage1":
            out[a] = tr(a, r2, "stage2", model=str(out["solar_s1"]))
        else:
            s1a = tr(f"{a}_s1", r1, "stage1")
            out[a] = tr(f"{a}_s12", r2, "stage2", model=str(s1a))
    if "solar_s1" not in cfg.methods:
        out.pop("solar_s1", None)
    return out


def _bench(cfg: TableConfig, log: Callable):
    from solar.eval.construct import BenchmarkConfig, build_benchmark
    from solar.eval.manifest import load_benchmark
    path = Path(cfg.out_dir) / f"benchmark{_suffix(cfg)}.jsonl"
    bcfg = BenchmarkConfig(seed=cfg.bench_seed, max_items=cfg.bench_max_items, split=cfg.bench_split)
    if path.is_file():
        bench = load_benchmark(path)
        if bench.config == dataclasses.asdict(bcfg):
            return bench
    t = time.perf_counter()
    bench = build_benchmark(bcfg)
    bench.save(path)
    log(f"benchmark: {bench.stats['triplets']} triplets, sym pool {bench.stats['pool_sizes']['sym']}, "
        f"built in {time.perf_counter() - t:.0f} s")
    return bench


def _suffix(cfg: TableConfig) -> str:
    """File-name suffix of a table's benchmark and results: "" on the test split, ".val" on the
    val twin (the runs are shared: one training, scored on either)."""
    return "" if cfg.bench_split == "test" else f".{cfg.bench_split}"


def run_table(cfg: TableConfig, log: Callable = print) -> dict:
    """Train, evaluate and aggregate; writes results.json and table.md into ``cfg.out_dir``
    (results.val.json and table.val.md when ``bench_split`` is "val")."""
    from solar.eval.embed import TowerCache
    from solar.eval.evaluate import evaluate
    from solar.eval.run import manifest_digest
    from solar.model import load_model
    t0 = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res_path = out_dir / f"results{_suffix(cfg)}.json"
    bench = _bench(cfg, log)
    digest = manifest_digest(bench)
    old = json.loads(res_path.read_text()) if res_path.is_file() else {}
    runs = old.get("runs", {}) if old.get("benchmark_sha256") == digest else {}
    pairs = train_pairs(cfg)
    log(f"training on {len(pairs)} pairs of the train split")
    cache = TowerCache()
    result = {"config": dataclasses.asdict(cfg), "benchmark_sha256": digest,
              "benchmark_stats": bench.stats, "train_pairs": len(pairs), "runs": runs}
    for seed in cfg.seeds:
        for name, ckpt in _runs_for_seed(cfg, pairs, seed, log).items():
            key = f"{name}/seed{seed}"
            if key in runs and runs[key].get("checkpoint") == str(ckpt):
                continue
            t = time.perf_counter()
            r = evaluate(load_model(ckpt), bench, batch_size=cfg.eval_batch_size, cache=cache)
            r["checkpoint"] = str(ckpt)
            runs[key] = r
            log(f"eval {key}: Avg {r['sym']['Avg']:.1f}, asym R@10 {r['asym_R@10_mean']:.1f} "
                f"({time.perf_counter() - t:.0f} s)")
            res_path.write_text(json.dumps(result, indent=2))
    result["wall_seconds_this_call"] = round(time.perf_counter() - t0, 1)
    res_path.write_text(json.dumps(result, indent=2))
    (out_dir / f"table{_suffix(cfg)}.md").write_text(render_tables(result))
    return result


def render_tables(result: dict) -> str:
    """Main table and ablations (mean ± sample std over seeds) plus the asymmetric tasks."""
    from solar.eval.report import aggregate, asym_table, markdown_table
    groups: dict = {}
    for key, r in result["runs"].items():
        groups.setdefault(key.split("/")[0], []).append(r)
    order = [m for m in (*METHODS, *ABLATIONS) if m in groups]
    rows = [(f"{LABELS[m]} (n={len(groups[m])})", aggregate(groups[m])) for m in order]
    main = [r for m, r in zip(order, rows) if m in METHODS]
    abl = [r for m, r in zip(order, rows) if m in ABLATIONS or m == "solar_s12"]
    cols = ["R@1", "R@5", "R@10", "mR", "Precision", "Avg", "Precision[text_swap]",
            "Precision[image_swap]", "asym R@10"]
    parts = ["### Symmetric task\n\n" + markdown_table(main, cols)]
    if len(abl) > 1:
        parts.append("### Ablations of SOLAR stage 1+2\n\n" + markdown_table(abl, cols))
    parts.append("### Asymmetric tasks\n\n" + asym_table(rows))
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> None:
    """python -m solar.experiments.table [--preset cpu|cpu-short|smoke] [--out-dir DIR] [--seeds 0,1,2]
    [--split test|val]"""
    import click

    @click.command()
    @click.option("--preset", type=click.Choice(sorted(PRESETS)), default="cpu", show_default=True)
    @click.option("--out-dir", default=None, help="Override the preset's output folder.")
    @click.option("--seeds", default=None, help="Comma-separated seeds (default: the preset's).")
    @click.option("--cache-dir", default=None, help="Tower feature cache of the training runs.")
    @click.option("--split", "bench_split", type=click.Choice(["test", "val"]), default="test",
                  show_default=True, help="Score on the benchmark (test) or its val twin, the one "
                  "to choose settings on; the trained runs are shared.")
    def cmd(preset, out_dir, seeds, cache_dir, bench_split):
        cfg = PRESETS[preset]()
        if out_dir:
            cfg.out_dir = out_dir
        if seeds:
            cfg.seeds = tuple(int(s) for s in seeds.split(","))
        if cache_dir:
            cfg.cache_dir = cache_dir
        cfg.bench_split = bench_split
        t = time.perf_counter()
        result = run_table(cfg, log=lambda m: click.echo(f"[{time.perf_counter() - t:7.0f} s] {m}", err=True))
        click.echo(render_tables(result))

    cmd.main(args=argv, standalone_mode=True)


if __name__ == "__main__":
    main()
