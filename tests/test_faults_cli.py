"""What a user sees when things go wrong, run as a user runs it (``python -m solar.cli`` in a
subprocess, stderr captured): one ``Error:`` line and no library traceback (``--verbose`` shows
it), stored text with terminal escapes printed inert, special files refused as query images,
search never creating a database, Ctrl-C as one line, and no decode worker left behind when the
job is interrupted or killed with SIGKILL."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from test_milvus_common import make_corpus  # noqa: E402

TESTS = Path(__file__).resolve().parent
MODEL = "test_milvus_common:HashEncoder"
ESCAPES = "\x1b]0;pwned\x07 retitle \x1b[2J clear \x9b31m csi \u202e bidi \x07 bell"
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
START_WAIT_S = 600         # a job's start (imports, model, workers) on a crowded machine
# The job starts as from a terminal: SIGINT at its default and not blocked.  A signal mask and an
# ignored SIGINT pass through fork and exec, so a state the test process was left in by a
# library (multiprocessing and loky block SIGINT in the thread that spawns their helpers) would
# otherwise reach the job, which then never sees the Ctrl-C.  The same process (exec), so
# proc.pid is the job's.
AS_FROM_A_TERMINAL = ("import os, signal, sys; "
                      "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
                      "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def _env(**kw) -> dict:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    env.pop("SOLAR_VERBOSE", None)
    env.update(kw)
    return env


def _cli(*args, timeout: float = START_WAIT_S, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "solar.cli", *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def _assert_one_error_line(r: subprocess.CompletedProcess, needle: str) -> None:
    """Exit status not 0, no traceback, and stderr is one ``Error:`` line (plus click's usage
    lines for a usage error) that contains ``needle``."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    others = [ln for ln in lines if not ln.startswith(("Error:", "Usage:", "Try '"))]
    assert len(errors) == 1 and not others, r.stderr[-3000:]
    assert needle in errors[0], errors[0]
    assert not CONTROL.search(r.stderr)


# Runs several commands in ONE interpreter (imports and Milvus Lite start once), each with the
# process's own stdout/stderr file descriptors redirected to files: what a terminal would show,
# library log handlers included.  A command that blocks is stopped by SIGALRM and reported as
# "timeout"; after one, the remaining cases of its group are not run.
HARNESS = r"""
import json, os, signal, sys, tempfile, traceback
from solar.cli import main

class Hung(Exception):
    pass

def on_alarm(*a):
    raise Hung()

signal.signal(signal.SIGALRM, on_alarm)
cases, out, hung = json.loads(sys.argv[1]), {}, set()
for name, group, args in cases:
    if group and group in hung:
        continue
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(files[0].fileno(), 1); os.dup2(files[1].fileno(), 2)
    signal.alarm(240)
    try:
        main(args, prog_name="solar-index")
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except Hung:
        rc = "timeout"
        hung.add(group)
    except Exception:                 # what the interpreter prints for an uncaught error
        traceback.print_exc()
        rc = 1
    finally:
        signal.alarm(0)
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    text = []
    for f in files:
        f.seek(0)
        text.append(f.read().decode("utf-8", "replace"))
    out[name] = [rc] + text
print("RESULTS" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Ingest a small corpus (with a document whose text holds terminal escapes), then run every
    single-process case; name -> CompletedProcess-like (returncode, stdout, stderr)."""
    root = tmp_path_factory.mktemp("cli_faults")
    make_corpus(root / "docs", n_good=4)
    (root / "docs" / "esc.txt").write_text(ESCAPES, encoding="utf-8")
    uri = str(root / "store.db")
    (root / "plain.db").write_bytes(b"not a folder")
    ck = root / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"format": "solar-model", "model": {}}))
    (ck / "model.safetensors").write_bytes(b"\x00" * 7)
    os.mkfifo(root / "fifo.png")
    base = ["search", "-t", "apple", "--model", MODEL, "--uri", uri]
    cases = [
        ("ingest", "", ["ingest", str(root / "docs"), "--uri", uri, "--model", MODEL,
                        "--workers", "0", "--quiet", "--max-pixels", "100000"]),
        ("bad_filter", "", base + ["--filter", "meta[ == 3"]),
        ("unknown_field", "", base + ["--filter", "nofield == 3"]),
        ("verbose", "", ["--verbose"] + base + ["--filter", "nofield == 3"]),
        ("plain_file", "", ["search", "-t", "x", "--model", MODEL,
                            "--uri", str(root / "plain.db")]),
        ("checkpoint", "", ["search", "-t", "x", "--uri", uri, "--model", str(ck)]),
        ("missing_db", "", ["search", "-t", "x", "--model", MODEL,
                            "--uri", str(root / "new" / "nothing.db")]),
        ("escapes_text", "", ["search", "-t", "retitle clear", "-k", "30", "--uri", uri,
                              "--model", MODEL]),
        ("escapes_json", "", ["search", "-t", "retitle clear", "-k", "30", "--uri", uri,
                              "--model", MODEL, "--json"]),
        ("fifo", "special", ["search", "-i", str(root / "fifo.png"), "--uri", uri, "--model",
                             MODEL]),
        ("dev_zero", "special", ["search", "-i", "/dev/zero", "--uri", uri, "--model", MODEL]),
    ]
    r = subprocess.run([sys.executable, "-c", HARNESS, json.dumps(cases)], env=_env(),
                       capture_output=True, text=True, timeout=2 * START_WAIT_S, cwd=root)
    assert "RESULTS" in r.stdout, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULTS", 1)[1])
    assert res["ingest"][0] == 0, res["ingest"]
    return {"root": root, **{k: subprocess.CompletedProcess(k, *v) for k, v in res.items()}}


# -- one line instead of a traceback --------------------------------------------------------------
def test_library_errors_are_one_line_and_verbose_shows_the_trace(runs):
    _assert_one_error_line(runs["bad_filter"], "rejected")
    _assert_one_error_line(runs["unknown_field"], "nofield")
    _assert_one_error_line(runs["plain_file"], "plain.db")
    _assert_one_error_line(runs["checkpoint"], "model.safetensors")
    assert runs["verbose"].returncode != 0 and "Traceback" in runs["verbose"].stderr


def test_a_second_process_on_a_lite_folder_is_one_line(tmp_path):
    uri = tmp_path / "locked.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom solar_milvus.store import connect\n"
         f"c = connect({str(uri)!r})\nprint('ready', flush=True)\ntime.sleep(300)"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        r = _cli("search", "-t", "apple", "--uri", uri, "--model", MODEL)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    _assert_one_error_line(r, "another process")


def test_ray_engine_against_an_unreachable_server_is_one_line(tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a document")
    r = _cli("ingest", tmp_path / "docs", "--engine", "ray", "--uri", "http://127.0.0.1:9",
             "--model", MODEL, "--quiet")
    _assert_one_error_line(r, "cannot open Milvus at http://127.0.0.1:9")


# -- output and input of search ----------------------------------------------------------------
def test_search_output_shows_control_characters_escaped(runs):
    text, js = runs["escapes_text"], runs["escapes_json"]
    assert text.returncode == 0, text.stderr[-2000:]
    assert "retitle" in text.stdout and "\\x1b]0;pwned\\x07" in text.stdout
    assert not CONTROL.search(text.stdout)
    assert js.returncode == 0 and not CONTROL.search(js.stdout)
    assert ESCAPES in [h["text"] for h in json.loads(js.stdout)]     # the data itself is intact


def test_special_files_are_refused_as_query_images(runs):
    for name in ("fifo", "dev_zero"):         # a FIFO would block, /dev/zero never ends
        assert name in runs, f"{name}: not run (an earlier special file blocked)"
        _assert_one_error_line(runs[name], "not a regular file")


def test_an_oversized_query_image_is_refused_before_it_is_read(tmp_path):
    from solar.data import load_image_uri
    from solar.data.readers import DEFAULT_MAX_BYTES
    big = tmp_path / "big.png"
    with open(big, "wb") as f:                    # sparse: no disk space used
        f.truncate(DEFAULT_MAX_BYTES + 1)
    with pytest.raises(ValueError, match="over the limit"):
        load_image_uri(str(big))


def test_search_never_creates_a_database(runs):
    _assert_one_error_line(runs["missing_db"], "no Milvus Lite database")
    assert not (runs["root"] / "new").exists()


# -- Ctrl-C and kill -9 leave nothing behind -------------------------------------------------
def _children(pid: int) -> set:
    """Live descendants of ``pid`` (from /proc; zombies count as gone)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pids: set) -> set:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def _wait_gone(pids: set, limit: float = 180.0) -> set:
    end = time.monotonic() + limit
    while _alive(pids) and time.monotonic() < end:
        time.sleep(0.1)
    return _alive(pids)


def _start_job(tmp_path: Path):
    make_corpus(tmp_path / "docs", n_good=200)    # 30 s of encoding at least: never done first
    ledger = tmp_path / "job.ledger.jsonl"
    args = ["-m", "solar.cli", "ingest", str(tmp_path / "docs"), "--uri",
            str(tmp_path / "job.db"), "--model", "test_milvus_common:slow_encoder", "--workers",
            "2", "--batch-size", "2", "--quiet", "--ledger", str(ledger)]
    proc = subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    end = time.monotonic() + START_WAIT_S
    kids: set = set()
    while time.monotonic() < end and proc.poll() is None:
        kids |= _children(proc.pid)
        if ledger.exists() and len(ledger.read_bytes().splitlines()) >= 2 and len(kids) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return proc, kids | _children(proc.pid)


def _reap(proc, pids: set) -> None:
    for p in _alive(pids):                        # our own job's processes only
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_ctrl_c_is_one_line_and_leaves_no_worker(tmp_path):
    proc, kids = _start_job(tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGINT)        # as a terminal does: the whole group
        out, err = proc.communicate(timeout=START_WAIT_S)
        left = _wait_gone(kids)
    finally:
        _reap(proc, kids)
    assert proc.returncode == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Interrupted:"), err[-3000:]
    assert "resume" in lines[0] and "documents stored" in lines[0]
    assert not left, f"processes left after Ctrl-C: {sorted(left)}"


def test_kill_9_leaves_no_decode_worker(tmp_path):
    proc, kids = _start_job(tmp_path)
    try:
        assert kids, "the job started no decode worker"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        left = _wait_gone(kids)
    finally:
        _reap(proc, kids)
    assert not left, f"processes left after kill -9: {sorted(left)}"
