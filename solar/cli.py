"""The ``solar-index`` command line.

Thin click commands: each parses options, builds a config object and calls one library function.
Subcommands live beside the code they drive and load lazily, so ``solar-index info`` stays fast and
never imports transformers or pymilvus.
"""
from __future__ import annotations

import importlib
import importlib.util
import json

import click

# name -> (module, attribute)
_COMMANDS = {
    "train": ("solar.train.cli", "train"),
    "eval": ("solar.eval.cli", "eval_cmd"),
    "ingest": ("solar_milvus.cli", "ingest"),
    "search": ("solar_milvus.cli", "search"),
    "demo": ("solar_milvus.cli", "demo"),
}


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        lazy = [n for n, (mod, _) in _COMMANDS.items() if _present(mod)]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx, name):
        if name in _COMMANDS and _present(_COMMANDS[name][0]):
            module, attr = _COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


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
