"""``solar-index ingest | search | demo``: thin click commands over the plugin's library calls.

``--uri`` / ``--token`` (or MILVUS_URI / MILVUS_TOKEN) choose Milvus Lite (a local ``.db`` path,
the default) or a server (``http://host:19530``).  The token is never printed.
"""
from __future__ import annotations

import functools
import json

import click

from solar.console import is_verbose, json_safe, one_line, terminal_safe
from solar.data.decode import DEFAULT_MAX_PIXELS

from .store import DEFAULT_COLLECTION, DEFAULT_URI, INDEX_TYPES

_DEVICES = click.Choice(["auto", "cpu", "cuda"])


def _store_options(f):
    @click.option("--uri", envvar="MILVUS_URI", default=DEFAULT_URI, show_default=True,
                  help="Milvus Lite path (ending in .db) or server URI [env MILVUS_URI].")
    @click.option("--token", envvar="MILVUS_TOKEN", default="", show_default=False,
                  help="Server token, e.g. user:password [env MILVUS_TOKEN]; never printed.")
    @click.option("--collection", default=DEFAULT_COLLECTION, show_default=True)
    @click.option("--model", default=None,
                  help="Checkpoint folder, preset name or module:callable "
                       "[default: $SOLAR_MODEL or solar-clipart].")
    @click.option("--device", type=_DEVICES, default="auto", show_default=True)
    @functools.wraps(f)
    def wrapper(*a, **k):
        return f(*a, **k)
    return wrapper


def _run(fn, *args, **kw):
    """Call a library function; bad input is a usage error, store trouble a plain error (each one
    terminal-safe line).  Anything else goes to the command group's one-line error path."""
    from .store import SchemaMismatchError, StoreError
    try:
        return fn(*args, **kw)
    except (ConnectionError, StoreError, ValueError) as err:
        if is_verbose():
            raise
        if isinstance(err, (SchemaMismatchError, ConnectionError, StoreError)):
            raise click.ClickException(one_line(err)) from None
        raise click.UsageError(one_line(err)) from None


@click.command()
@click.argument("sources", nargs=-1, required=True)
@_store_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Documents per encode and upsert.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decode processes (0: decode in a thread) [default: cores - 1, 1 to 4].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS,
              show_default=True, help="Images with more pixels are quarantined.")
@click.option("--max-side", type=click.IntRange(min=16), default=512, show_default=True,
              help="Images are shrunk to this long side when decoded.")
@click.option("--index", "index_type", type=click.Choice(INDEX_TYPES), default="FLAT",
              show_default=True, help="Vector index built when the collection is created.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Read at most N records.")
@click.option("--ledger", type=click.Path(dir_okay=False), default=None,
              help="Resume ledger file [default: beside the Lite folder].")
@click.option("--quarantine", type=click.Path(dir_okay=False), default=None,
              help="Quarantine JSONL file [default: beside the Lite folder].")
@click.option("--no-resume", is_flag=True, help="Ignore the ledger of earlier runs.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process and its decode workers; ray: a Ray Data job.")
@click.option("--ray-address", default=None,
              help="Ray cluster: auto, ray://host:10001 [default: RAY_ADDRESS or a local instance].")
@click.option("--ray-workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Model actors (one GPU each where present).")
@click.option("--shard", default=None, metavar="I/N",
              help="Ingest only shard I of N (a deterministic split by content id).")
def ingest(sources, uri, token, collection, model, device, batch_size, workers, max_pixels,
           max_side, index_type, limit, ledger, quarantine, no_resume, retries, quiet, as_json,
           engine, ray_address, ray_workers, shard):
    """Ingest SOURCES (folders, .jsonl/.csv manifests, .tar shards, .parquet, clipart[:N],
    emoji[:N]) into a collection; bad records go to the quarantine file."""
    from solar.data import DecodeConfig

    from .ingest import IngestConfig, default_workers
    from .ingest import ingest as run_ingest
    from .models import load_embedder
    from .store import IndexSpec
    cfg = _run(IngestConfig, list(sources), uri=uri, token=token, collection=collection,
               batch_size=batch_size, workers=default_workers() if workers is None else workers,
               decode=DecodeConfig(max_pixels=max_pixels, max_side=max_side),
               index=IndexSpec(index_type), resume=not no_resume, retries=retries,
               ledger=ledger, quarantine=quarantine, limit=limit, progress=not quiet)
    _run(cfg.open_sources)                      # a bad spec fails before the model loads
    from .sharding import parse_shard, shard_config
    shard = _run(parse_shard, shard)
    if engine == "ray":
        from .ray_engine import RayIngestConfig, run_ray_ingest
        factory = functools.partial(load_embedder, model, device, batch_size, cfg.decode)
        summary = _run(run_ray_ingest, RayIngestConfig(cfg, factory, address=ray_address,
                                                       workers=ray_workers, shard=shard))
    else:
        embedder = _run(load_embedder, model, device, batch_size, cfg.decode)
        summary = _run(run_ingest, embedder, shard_config(cfg, shard))
    if as_json:
        click.echo(json_safe(json.dumps(summary.to_dict(), indent=2)))
    else:
        click.echo(terminal_safe(summary))
        if summary.quarantined:
            path = terminal_safe(summary.quarantine_path)
            click.echo(f"quarantined records and reasons: {path}")


@click.command()
@click.option("--text", "-t", default=None, help="Query text.")
@click.option("--image", "-i", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Query image file.")
@_store_options
@click.option("--top-k", "-k", type=click.IntRange(1, 16384), default=10, show_default=True)
@click.option("--filter", "filter_expr", default=None,
              help='Milvus filter, e.g. \'source == "openclipart" and meta["category"] == "animals"\'.')
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write a report page with thumbnails, scores and heat maps.")
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
def search(text, image, uri, token, collection, model, device, top_k, filter_expr, html_path,
           as_json):
    """Search with a query document: --text, --image or both (one space for all three)."""
    if text is None and image is None:
        raise click.UsageError("give --text, --image or both")
    if text is not None and not text.strip():
        raise click.BadParameter("the query text is empty", param_hint="--text")
    from .embedding import as_document
    from .models import load_embedder
    from .search import Searcher
    from .store import connect
    query = _run(as_document, {"text": text, "image": image})
    embedder = _run(load_embedder, model, device)
    client = _run(connect, uri, token, create=False)      # searching never creates a database
    hits = _run(lambda: Searcher(client, collection, embedder).search([query], top_k,
                                                                       filter_expr)[0])
    # Stored text is data, not terminal commands: control characters are shown escaped.
    if as_json:
        click.echo(json_safe(json.dumps([h.to_dict() for h in hits], indent=2,
                                        ensure_ascii=False)))
    else:
        for r, h in enumerate(hits, 1):
            label = terminal_safe((h.text or h.image_uri).replace("\n", " ")[:100])
            click.echo(f"{r:3d}  {h.score:.4f}  {terminal_safe(h.id[:12])}  {label}")
        if not hits:
            click.echo("no results")
    if html_path:
        from .report import write_report
        path = write_report(html_path, [query], [hits], embedder.model)
        click.echo(f"report: {path}")


@click.command()
@click.option("--model", default=None,
              help="Checkpoint folder or preset [default: $SOLAR_MODEL or solar-clipart].")
@click.option("--out", type=click.Path(file_okay=False), default="solar_demo", show_default=True,
              help="Folder for the Milvus Lite data, the held-out views and report.html.")
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Clip-art corpus pairs to ingest, besides the held-out items [default: 500].")
@click.option("--all", "all_items", is_flag=True,
              help="Ingest the whole clip-art set (about 7,000 pairs).")
@click.option("--top-k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None)
@click.option("--device", type=_DEVICES, default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(model, out, limit, all_items, top_k, batch_size, workers, device, quiet):
    """Ingest clip-art pairs and held-out items under one view into a local Milvus Lite folder,
    query with the items' other view (image + text, image only, text only) and write
    OUT/report.html.

    The held-out items come from the clip-art test split (never trained on); the report marks
    where each query found its stored view, and free text queries follow."""
    from .demo import DEMO_LIMIT, DemoConfig, run_demo
    from .ingest import default_workers
    if all_items and limit is not None:
        raise click.UsageError("--all and --limit exclude each other")
    cfg = _run(DemoConfig, model=model, out=out, limit=None if all_items else (limit or DEMO_LIMIT),
               top_k=top_k, batch_size=batch_size,
               workers=default_workers() if workers is None else workers,
               device=None if device == "auto" else device, progress=not quiet)
    res = _run(run_demo, cfg)
    click.echo(str(res.summary))
    corpus = "all" if cfg.limit is None else cfg.limit
    click.echo(f"index: {corpus} clip-art corpus pairs + {len(res.heldout)} held-out test items "
               f"stored under one view; their other view is the query")
    for q, hits, target in zip(res.queries, res.results, res.targets):
        doc = q.doc
        best = hits[0] if hits else None
        label = f"{best.score:.3f} {best.text[:60]!r}" if best else "no results"
        found = f"{target.verdict()}; " if target is not None else ""
        line = f"query [{doc.kind}] {(doc.text or '')[:40]!r}: {found}top hit {label}"
        click.echo(terminal_safe(line))
    if res.originals:
        from .demo import originals_warning
        click.echo(originals_warning(len(res.originals)), err=True)
    t = res.timings
    click.echo(f"report: {res.report}  (model {t['model_s']:.1f} s, ingest {t['ingest_s']:.1f} s, "
               f"search {t['search_s']:.1f} s, total {t['total_s']:.1f} s)")
