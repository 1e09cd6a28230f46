"""The ``solar-index`` command line.

Thin click commands: each parses options, builds a config object and calls one library function.
Subcommands live beside the code they drive and load lazily: ``solar-index --help`` lists them
from the table below without importing them (no torch), and ``solar-index info`` never imports
transformers or pymilvus.
"""
from __future__ import annotations

import importlib
import importlib.util
import json

import click

# name -> (module, attribute, the first paragraph of the command's help; a test keeps it equal)
_COMMANDS = {
    "train": ("solar.train.cli", "train",
              "Train a recipe on the offline pairs (runs under torchrun as well)."),
    "eval": ("solar.eval.cli", "eval_cmd",
             "Evaluate MODEL... (checkpoint folders or preset names, optionally LABEL=PATH)."),
    "ingest": ("solar_milvus.cli", "ingest",
               "Ingest SOURCES (folders, .jsonl/.csv manifests, .tar shards, .parquet, "
               "clipart[:N], emoji[:N]) into a collection; bad records go to the quarantine "
               "file."),
    "search": ("solar_milvus.cli", "search",
               "Search with a query document: --text, --image or both (one space for all three)."),
    "demo": ("solar_milvus.cli", "demo",
             "Ingest the offline clip-art set into a local Milvus Lite folder, run symmetric "
             "queries (text only, image only, image + text) and write OUT/report.html."),
}


def _present(module: str) -> bool:
    """Whether the package holding ``module`` is installed (without importing it)."""
    top = module.split(".")[0]
    if top == __name__.split(".")[0]:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ModuleNotFoundError, ValueError):
        return False


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        lazy = [n for n, (mod, _, _) in _COMMANDS.items() if _present(mod)]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx, name):
        if name in _COMMANDS and _present(_COMMANDS[name][0]):
            module, attr, _ = _COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        """click's listing, with the lazy commands' help from _COMMANDS (nothing imported)."""
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        rows = []
        for name in self.list_commands(ctx):
            if name in _COMMANDS:
                rows.append((name, click.utils.make_default_short_help(_COMMANDS[name][2], limit)))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="solar-mm", prog_name="solar-index")
def main():
    """Symmetric image+text document search: train, ingest into Milvus, search, evaluate."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json: bool):
    """Versions, which kernel backends were built and which can run here, and the device."""
    from .info import collect, render

    data = collect()
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


if __name__ == "__main__":
    main()
