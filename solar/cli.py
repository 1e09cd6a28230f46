"""The ``solar-index`` command line.

Thin click commands: each parses options, builds a config object and calls one library function.
Subcommands live beside the code they drive and load lazily, so ``solar-index info`` stays fast and
never imports transformers or pymilvus.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging

import click

from .console import VERBOSE_ENV, one_line, verbose_from_env

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
        lazy = [n for n, (mod, _) in _COMMANDS.items() if _present(mod)]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx, name):
        if name in _COMMANDS and _present(_COMMANDS[name][0]):
            module, attr = _COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


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
