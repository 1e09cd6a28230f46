"""``solar-index ingest | search | demo`` through click's CliRunner: happy paths (real Milvus Lite)
and bad arguments."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from click.testing import CliRunner  # noqa: E402

from solar.cli import main  # noqa: E402
from test_milvus_common import MAX_PIXELS, corpus, good_text, picture  # noqa: F401,E402

MODEL = "test_milvus_common:HashEncoder"
SECRET = "s3cr3t-t0ken"


def _run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def ingested(corpus, tmp_path):
    uri = tmp_path / "cli.db"
    r = _run("ingest", corpus["path"], "--uri", uri, "--model", MODEL, "--workers", 0,
             "--max-pixels", MAX_PIXELS, "--quiet", "--json", env={"MILVUS_TOKEN": SECRET})
    assert r.exit_code == 0, r.output
    return corpus, uri, json.loads(r.output)


def test_ingest_happy_path_and_rerun(ingested, tmp_path):
    corpus, uri, summary = ingested
    assert summary["ingested"] == corpus["good"] and summary["quarantined"] == corpus["bad"]
    r = _run("ingest", corpus["path"], "--uri", uri, "--model", MODEL, "--workers", 0,
             "--max-pixels", MAX_PIXELS, "--quiet")
    assert r.exit_code == 0, r.output
    assert f"skipped as already present {corpus['good']}" in r.output
    assert "quarantined records and reasons:" in r.output
    assert SECRET not in r.output


def test_search_happy_path_with_html(ingested, tmp_path):
    corpus, uri, _ = ingested
    img = tmp_path / "q.png"
    picture(4).save(img)
    page = tmp_path / "report.html"
    r = _run("search", "--text", good_text(4), "--image", img, "--uri", uri, "--model", MODEL,
             "-k", 3, "--html", page)
    assert r.exit_code == 0, r.output
    assert good_text(4) in r.output.splitlines()[0]
    html = page.read_text()
    assert "<img" in html and good_text(4) in html and "no intersection masks" in html
    r = _run("search", "--text", "apple", "--uri", uri, "--model", MODEL, "--json",
             "--filter", 'meta["parity"] == 0')
    hits = json.loads(r.output)
    assert r.exit_code == 0 and hits and all(h["meta"]["parity"] == 0 for h in hits)


@pytest.mark.parametrize("args,needle", [
    ([], "Missing argument"),
    (["/no/such/folder"], "no such file"),
    (["CORPUS", "--batch-size", "0"], "--batch-size"),
    (["CORPUS", "--uri", "plain-folder"], "must end in .db"),
    (["CORPUS", "--model", "no-such-model"], "no-such-model"),
    (["CORPUS", "--index", "DISKANN"], "--index"),
])
def test_ingest_bad_arguments(args, needle, corpus, tmp_path):
    args = [str(corpus["path"]) if a == "CORPUS" else a for a in args]
    if "--uri" not in args:
        args += ["--uri", str(tmp_path / "x.db")]
    r = _run("ingest", *args, "--quiet")
    assert r.exit_code == 2 and needle in r.output, r.output


def test_search_bad_arguments(ingested, tmp_path):
    corpus, uri, _ = ingested
    base = ["--uri", uri, "--model", MODEL]
    cases = [
        ([], 2, "give --text, --image or both"),
        (["--text", "  "], 2, "empty"),
        (["--text", "x", "-k", "0"], 2, "--top-k"),
        (["--image", tmp_path / "missing.png"], 2, "does not exist"),
        (["--text", "x", "--collection", "nope"], 2, "does not exist"),
        (["--text", "x", "--filter", "no_such >>> 1"], 2, "rejected"),
    ]
    for args, code, needle in cases:
        r = _run("search", *args, *base)
        assert r.exit_code == code and needle in r.output, (args, r.output)
    r = _run("search", "--text", "x", "--uri", uri, "--model", "solar-tiny-random")
    assert r.exit_code == 1 and "does not match the model" in r.output


def test_token_is_never_printed(tmp_path):
    r = _run("search", "--text", "x", "--uri", "http://admin:pw@127.0.0.1:9", "--token", SECRET,
             "--model", MODEL)
    assert r.exit_code == 1 and "cannot open Milvus" in r.output
    assert SECRET not in r.output and "pw@" not in r.output


def test_demo_happy_path_and_rerun(tmp_path):
    try:
        from solar.data.offline import clipart_pairs
        clipart_pairs(6)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    out = tmp_path / "demo"
    args = ["demo", "--model", "solar-tiny-random", "--limit", 6, "--out", out, "--quiet",
            "--workers", 0, "--top-k", 3]
    r = _run(*args)
    assert r.exit_code == 0, r.output
    from solar_milvus.demo import DEMO_HELDOUT, DEMO_TEXT_QUERIES
    stored = 6 + DEMO_HELDOUT                   # the corpus and one view per held-out item
    assert f"ingested {stored}," in r.output
    assert r.output.count("query [") == DEMO_HELDOUT + len(DEMO_TEXT_QUERIES)
    assert r.output.count(": its other view: rank ") == DEMO_HELDOUT   # 12 docs, searched 100 deep
    assert "query [image+text]" in r.output and "query [image]" in r.output
    assert (out / "report.html").is_file() and (out / "milvus.db").is_dir()
    assert "Heat maps" in (out / "report.html").read_text()
    again = _run(*args)
    assert again.exit_code == 0 and f"skipped as already present {stored}" in again.output


@pytest.mark.parametrize("args,needle", [
    (["--all", "--limit", "5"], "exclude each other"),
    (["--limit", "1"], "--limit"),
    (["--top-k", "0"], "--top-k"),
])
def test_demo_bad_arguments(args, needle, tmp_path):
    r = _run("demo", *args, "--out", tmp_path / "d")
    assert r.exit_code == 2 and needle in r.output, r.output
