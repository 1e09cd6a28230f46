"""``solar-index train``: parse options, build a TrainConfig, call ``solar.train.train``."""
from __future__ import annotations

import dataclasses
import json
import typing

import click

from .config import TrainConfig
from .registry import recipe_names, recipe_spec


def _coerce(field: dataclasses.Field, raw: str):
    """Parse ``raw`` for a TrainConfig / ModelConfig field from its type annotation."""
    hint = str(field.type)
    if raw.lower() in ("none", "null") and "Optional" in hint:
        return None
    if "bool" in hint:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise click.BadParameter(f"{field.name} expects true/false, got {raw!r}")
    for name, typ in (("int", int), ("float", float)):
        if name in hint:
            try:
                return typ(raw)
            except ValueError:
                raise click.BadParameter(f"{field.name} expects a number, got {raw!r}") from None
    if "tuple" in hint or "dict" in hint or "TowerConfig" in hint:
        try:
            return json.loads(raw)
        except ValueError:
            raise click.BadParameter(f"{field.name} expects JSON, got {raw!r}") from None
    return raw


class RecipeName(click.ParamType):
    """A name in the recipe registry, read when the option is parsed or shown (so recipes
    registered after this module was imported count too)."""
    name = "recipe"

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(recipe_names()) + "]"

    def convert(self, value, param, ctx):
        try:
            return recipe_spec(value).name
        except ValueError as err:
            self.fail(str(err), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem
        return [CompletionItem(n) for n in recipe_names() if n.startswith(incomplete)]


def _pairs(values: typing.Iterable[str], cls, what: str) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=what)
        if key not in fields:
            raise click.BadParameter(f"unknown key {key!r}; known: {', '.join(sorted(fields))}",
                                     param_hint=what)
        out[key] = _coerce(fields[key], raw)
    return out


@click.command("train")
@click.option("--recipe", required=True, type=RecipeName(),
              help="A registered recipe: stage1 / stage2 (SOLAR), gcl or clip (score-fusion "
                   "baselines), the ablations *-no-*, or one added with "
                   "solar.train.register_recipe.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoint/, metrics.jsonl, final model.safetensors + config.json.")
@click.option("--model", default=None,
              help="Preset name or checkpoint folder to start from (stage2: the stage-1 run).")
@click.option("--data", "data", multiple=True, metavar="SPEC",
              help="Training data, repeatable: any `solar-index ingest` source (folder, .jsonl/.csv "
                   "manifest, .tar shards, .parquet, a glob) or clipart[:N], emoji[:N], "
                   "clipart+emoji (default clipart).")
@click.option("--val-data", "val_data", multiple=True, metavar="SPEC",
              help="Explicit validation data (then all of --data trains; else a content-id split).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N records.")
@click.option("--stream/--no-stream", default=None,
              help="Stream the data through DataLoader workers (default: above 20,000 records).")
@click.option("--workers", "data_workers", type=click.IntRange(min=0), default=None,
              help="DataLoader processes that read and decode a stream (default 2).")
@click.option("--image-tower", default=None, metavar="PATH_OR_NAME",
              help="Local Hugging Face folder (CLIP, SigLIP, DINOv2, ViT) or efficientnet-lite0 / "
                   "tiny-image.")
@click.option("--text-tower", default=None, metavar="PATH_OR_NAME",
              help="Local Hugging Face folder (CLIP, SigLIP, BERT/BGE, ...) or minilm-l6 / tiny-text.")
@click.option("--lora-rank", type=click.IntRange(min=1), default=None,
              help="Fine-tune both towers with LoRA of this rank (through peft).")
@click.option("--freeze-towers/--no-freeze-towers", default=None,
              help="Keep the towers frozen (default; features can be cached) or train them fully.")
@click.option("--text-context", type=click.Choice(["full", "segments"]), default=None,
              help="What a text token sees: the whole text (full, the default) or only its piece "
                   "between punctuation (segments; sharper word masks for tag and keyword lists).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Train this many epochs (overrides --steps).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Per device, micro-step.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Tower feature cache folder (default ~/.cache/solar/features).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other TrainConfig field, e.g. --set w_gla=0.5 --set temperature=0.07.")
@click.option("--model-set", "model_sets", multiple=True, metavar="KEY=VALUE",
              help="ModelConfig field of a preset, e.g. --model-set dim=128; a tower's fields as "
                   "JSON, e.g. --model-set 'image_tower={\"output_stride\": 16}'.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(recipe, out_dir, model, data, val_data, limit, stream, data_workers, image_tower,
          text_tower, lora_rank, freeze_towers, text_context, steps, epochs, batch_size, grad_accum, lr, seed,
          cache_dir, sets, model_sets, no_progress):
    """Train a recipe on your data or the offline pairs (runs under torchrun as well)."""
    from solar.model.config import ModelConfig
    kw = {"recipe": recipe, "out_dir": out_dir, "model": model,
          "data": (data[0] if len(data) == 1 else list(data)) if data else None,
          "val_data": list(val_data) or None, "limit": limit, "stream": stream,
          "data_workers": data_workers, "image_tower": image_tower, "text_tower": text_tower,
          "lora_rank": lora_rank, "freeze_towers": freeze_towers, "text_context": text_context,
          "steps": steps, "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum,
          "lr": lr, "seed": seed, "cache_dir": cache_dir, "progress": not no_progress}
    kw = {k: v for k, v in kw.items() if v is not None}
    kw.update(_pairs(sets, TrainConfig, "--set"))
    overrides = _pairs(model_sets, ModelConfig, "--model-set")
    if overrides:
        kw["model_overrides"] = overrides
    try:
        cfg = TrainConfig(**kw)
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from None
    from .loop import train as run
    try:
        summary = run(cfg)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    losses = summary.pop("losses")
    if losses:
        summary["first_loss"], summary["last_loss"] = losses[0], losses[-1]
    click.echo(json.dumps(summary, indent=2, default=float))
