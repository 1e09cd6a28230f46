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
import logging

import click

from .console import VERBOSE_ENV, one_line, verbose_from_env

# name -> (module, attribute, the first paragraph of the command's help; a test keeps it equal)
_COMMANDS = {
    "train": ("solar.train.cli", "train",
              "Train a recipe on your data or the offline pairs (runs under torchrun as well)."),
    "eval": ("solar.eval.cli", "eval_cmd",
             "Evaluate MODEL... (checkpoint folders or preset names, optionally LABEL=PATH)."),
    "ingest": ("solar_milvus.cli", "ingest",
               "Ingest SOURCES (folders, .jsonl/.csv manifests, .tar shards, .parquet, "
               "clipart[:N], emoji[:N]) into a collection; bad records go to the quarantine "
               "file."),
    "search": ("solar_milvus.cli", "search",
               "Search with a query document: --text, --image or both (one space for all three)."),
    "demo": ("solar_milvus.cli", "demo",
             "Ingest clip-art pairs and held-out items under one view into a local Milvus "
             "Lite folder, query with the items' other view (image + text, image only, text "
             "only) and write OUT/report.html."),
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


class _Stopped(click.ClickException):
    """Ctrl-C: one line saying where the command stopped (exit status 130, as a shell reports
    SIGINT)."""
    exit_code = 130

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


class _LazyGroup(click.Group):
    """Subcommands load on first use; every error ends as one line on stderr.

    Without ``--verbose`` (or SOLAR_VERBOSE=1) library log records below CRITICAL are muted while
    a command runs (pymilvus and Milvus Lite log whole tracebacks before raising), an error that
    escapes a command is shown as ``Error: <message>`` and Ctrl-C as one ``Interrupted`` line.
    With it, logs and the full traceback are shown.
    """

    def invoke(self, ctx):
        verbose = bool(ctx.params.get("verbose")) or verbose_from_env()
        muted = not verbose and logging.root.manager.disable < logging.ERROR
        if muted:
            logging.disable(logging.ERROR)
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as err:    # a job's own message says where it stopped
            raise _Stopped(f"Interrupted: {one_line(err)}" if str(err) else
                           "Interrupted: stopped before finishing; run the same command again "
                           "to continue.") from None
        except Exception as err:  # noqa: BLE001 - one line, or the traceback with --verbose
            if verbose:
                raise
            raise click.ClickException(f"{one_line(err)} [{type(err).__name__}; run with "
                                       f"--verbose or {VERBOSE_ENV}=1 for the traceback]"
                                       ) from None
        finally:
            if muted:
                logging.disable(logging.NOTSET)

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
@click.option("--verbose", "-v", is_flag=True,
              help=f"Show library logs and the full traceback of an error [env {VERBOSE_ENV}=1].")
def main(verbose: bool):
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
