"""``solar-index eval``: score checkpoints on the symmetric MM2MM benchmark (docs/benchmark.md)."""
from __future__ import annotations

import click

from .evaluate import TASKS


def _parse_model(spec: str) -> tuple[str, str]:
    """"LABEL=PATH" or "PATH" (label = the folder or preset name)."""
    if "=" in spec:
        label, path = spec.split("=", 1)
        if not label or not path:
            raise click.BadParameter(f"{spec!r}: expected LABEL=PATH", param_hint="MODEL")
        return label, path
    return spec.rstrip("/").split("/")[-1] or spec, spec


@click.command("eval")
@click.argument("models", nargs=-1, metavar="MODEL...")
@click.option("--benchmark", "benchmark", type=click.Path(exists=True, dir_okay=False),
              help="Benchmark manifest (JSONL). Default: build the offline benchmark.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Construction seed when building the benchmark.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="Build from this split (val: a twin benchmark for choosing settings).")
@click.option("--max-items", type=click.IntRange(min=4), default=None,
              help="Build from a seeded subset of this many test items (quick runs).")
@click.option("--save-benchmark", type=click.Path(dir_okay=False),
              help="Write the built benchmark manifest here.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--milvus-uri", default=None,
              help="Also search through Milvus (a Milvus Lite '.db' path or a server URI).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--tower-cache/--no-tower-cache", default=False, show_default=True,
              help="Compute frozen tower outputs once and share them across MODELs.")
@click.option("--task", "tasks", multiple=True, type=click.Choice(TASKS),
              help="Evaluate only these tasks (repeatable). Default: all.")
@click.option("--device", default=None, help="torch device for the models (default: CPU).")
@click.option("--masks", is_flag=True,
              help="Score the models' intersection masks on the mask benchmark (docs/masks.md) "
                   "instead of retrieval; --max-items then caps the number of composites.")
def eval_cmd(models, benchmark, seed, split, max_items, save_benchmark, out, milvus_uri, batch_size,
             tower_cache, tasks, device, masks):
    """Evaluate MODEL... (checkpoint folders or preset names, optionally LABEL=PATH).

    Prints R@1/5/10, mR, Precision and Avg of the symmetric task and R@1/5/10 of the asymmetric
    tasks (text->document, image->document, image->text, text->image); --out writes JSON.
    """
    from .construct import BenchmarkConfig
    from .run import EvalConfig, run_eval, tables

    if not models:
        raise click.UsageError("give at least one MODEL (a checkpoint folder or a preset name)")
    if benchmark and (max_items is not None or seed != 0 or split != "test" or save_benchmark):
        raise click.UsageError("--seed, --split, --max-items and --save-benchmark apply only when "
                               "building the benchmark, not with --benchmark")
    specs = [_parse_model(m) for m in models]
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise click.BadParameter(f"duplicate model labels {labels}; use LABEL=PATH", param_hint="MODEL")
    if masks:
        if milvus_uri or tasks or tower_cache:
            raise click.UsageError("--milvus-uri, --task and --tower-cache do not apply with --masks")
        return _eval_masks(specs, benchmark, seed, split, max_items, save_benchmark, out,
                           batch_size, device)
    try:
        cfg = EvalConfig(specs, benchmark, BenchmarkConfig(seed=seed, split=split, max_items=max_items),
                         save_benchmark, out, milvus_uri, batch_size, tower_cache,
                         tuple(tasks) or TASKS, device)
        result = run_eval(cfg, log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(tables(result))


def _eval_masks(specs, benchmark, seed, split, max_items, save_benchmark, out, batch_size, device):
    """The mask benchmark: each model's rows beside the all-ones mask and the untrained model."""
    import json
    import time

    from .mask_metrics import evaluate_masks, masks_table
    from .masks import MaskBenchConfig, build_mask_benchmark, load_mask_benchmark
    from solar.model import build_model, load_model
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    t0 = time.perf_counter()
    try:
        if benchmark:
            bench = load_mask_benchmark(benchmark)
        else:
            bench = build_mask_benchmark(MaskBenchConfig(seed=seed, split=split, max_cases=max_items))
            log(f"mask benchmark ({split}): {len(bench.cases)} composites, built in "
                f"{time.perf_counter() - t0:.0f} s")
            if save_benchmark:
                bench.save(save_benchmark)
        models = {label: load_model(path) for label, path in specs}
        for label, m in models.items():
            if not hasattr(m, "diagonal_scores"):
                raise ValueError(f"model {label!r} has no intersection masks (not a SOLAR model)")
            if device:
                m.to(device)
        first = next(iter(models.values()))
        untrained = build_model(first.cfg, seed=0).to(first.device)
        rows = evaluate_masks(models, bench, untrained=untrained, batch_size=batch_size, log=log)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(masks_table(rows))
    if out:
        from pathlib import Path
        Path(out).write_text(json.dumps({"benchmark": {"config": bench.config, "stats": bench.stats,
                                                       "sha256": bench.digest()},
                                         "models": {k: v for k, v in specs}, "rows": rows},
                                        indent=2, default=float))
