"""A real Milvus standalone server for tests (the ``milvus`` PyPI wheel, 2.3.5 on Linux).

The wheel carries the real C++/Go server binary; it starts offline on 127.0.0.1 in about 10-15 s.
:class:`MilvusTestServer` starts it in a folder of its own, stops it by its own process id and can
kill and restart it on the same data (for the fault tests).  The ``milvus_server`` fixture gives
one server per test session, shared by every module that imports the fixture, and stops it when
the session ends (also after a failure, and at interpreter exit as a last resort).

Limits of this server (docs: milvus.md): one vector field per collection, no hybrid search, and
Bounded consistency by default (read with ``consistency_level="Strong"`` where a read must see
the preceding write).  Its gRPC ports listen on all interfaces (the 2.3 server has no bind
address setting); every client here connects through 127.0.0.1 only, and etcd binds 127.0.0.1.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

# Coordinators advertise this address to each other (otherwise the first non-loopback one).
_LOOPBACK_KEYS = ("rootCoord.ip", "proxy.ip", "queryCoord.ip", "queryNode.ip", "indexNode.ip",
                  "dataCoord.ip", "dataNode.ip")
# A short session lease: after a kill the restarted coordinators need not wait 30 s for the
# previous process's lease to lapse.
_SESSION_TTL_S = 6
_PID_FILE = Path("/run/milvus/standalone.pid")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0


class ServerUnavailable(RuntimeError):
    """The server wheel is missing or the server did not start."""


class MilvusTestServer:
    """One standalone Milvus process with its data under ``base_dir`` (a temporary folder)."""

    def __init__(self, base_dir: Optional[str] = None):
        try:
            import milvus  # noqa: F401
        except ImportError as err:
            raise ServerUnavailable("the Milvus server wheel is not installed: "
                                    "pip install milvus==2.3.5") from err
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="solar-milvus-server-"))
        self._own_dir = base_dir is None
        self._server = None
        self.port: Optional[int] = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> "MilvusTestServer":
        """Start (or restart on the same data) and wait until it answers; returns self."""
        from milvus import MilvusServer
        if self.running:
            return self
        other = _remove_stale_pid_file()
        if other:
            raise ServerUnavailable(f"another Milvus server (pid {other}) holds {_PID_FILE}; "
                                    f"this server build runs one instance per machine")
        cfg = _config_class()(data_dir=str(self.base_dir))
        if self.port is not None:               # a restart keeps the port clients know
            cfg.update(proxy_port=self.port)
        for key in _LOOPBACK_KEYS:
            cfg.set(key, "127.0.0.1")
        cfg.set("common.session.ttl", _SESSION_TTL_S)
        server = MilvusServer(cfg, wait_for_started=False)
        t0 = time.monotonic()
        server.start()
        self._server = server
        self.port = server.listen_port
        if not self._wait_healthy(server, timeout):
            code = server.server_proc.poll()
            self.kill()
            why = f"exited with code {code}" if code is not None else f"no answer in {timeout:.0f} s"
            raise ServerUnavailable(f"Milvus server did not start ({why}); logs in "
                                    f"{self.base_dir / 'logs'}")
        self.start_seconds = time.monotonic() - t0
        return self

    @staticmethod
    def _wait_healthy(server, timeout: float) -> bool:
        """Poll the health endpoint until OK; False when the process exits or time runs out."""
        import urllib.error
        import urllib.request
        url = f"http://127.0.0.1:{server.webservice_port}/healthz"
        end = time.monotonic() + timeout
        while time.monotonic() < end and server.server_proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if b"OK" in resp.read():
                        time.sleep(1.0)            # as the wheel does: let the proxy settle
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        return False

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.server_proc is not None \
            and self._server.server_proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self._server.server_proc.pid if self.running else None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise ServerUnavailable("the server was never started")
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to our own server process, SIGKILL if it has not exited after ``timeout``."""
        proc = self._proc()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._release()

    def kill(self) -> None:
        """SIGKILL to our own server process (a crash); the data stays for a restart."""
        proc = self._proc()
        if proc is not None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        self._release()

    def close(self) -> None:
        """Stop and remove the data folder (when this object made it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _proc(self):
        if self._server is None:
            return None
        return self._server.server_proc

    def _release(self) -> None:
        if self._server is not None:
            self._server.server_proc = None
            for f in self._server.proc_fds.values():
                f.close()
            self._server.proc_fds.clear()
            self._server = None


def _config_class():
    """The wheel's config, probing ports with SO_REUSEADDR: without it a port that a killed
    server left in TIME_WAIT reads as taken, and a restart could not keep its port."""
    import socket

    from milvus import MilvusServerConfig

    class _Config(MilvusServerConfig):
        def try_bind_port(self, port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    return _Config


def _remove_stale_pid_file() -> int:
    """The server locks /run/milvus/standalone.pid (a fixed path: one server per machine).  A
    file left by a killed server is removed; returns the pid of a live owner, else 0."""
    try:
        pid = int(_PID_FILE.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
    if pid > 0:
        try:
            os.kill(pid, 0)
            return pid                           # alive: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            return pid
    try:
        _PID_FILE.unlink()
    except OSError:
        pass
    return 0


# -- one shared server per session -------------------------------------------------------------
_SHARED: dict = {}


def shared_server() -> MilvusTestServer:
    """The session's server, started on first use; a failed start is remembered (no retry)."""
    if "error" in _SHARED:
        raise _SHARED["error"]
    if "server" not in _SHARED:
        try:
            srv = MilvusTestServer()
            atexit.register(srv.close)
            srv.start()
        except ServerUnavailable as err:
            _SHARED["error"] = err
            raise
        _SHARED["server"] = srv
    srv = _SHARED["server"]
    if not srv.running:                          # a fault test left it stopped
        srv.start()
    return srv


def stop_shared_server() -> None:
    srv = _SHARED.pop("server", None)
    if srv is not None:
        srv.close()


@pytest.fixture(scope="session")
def milvus_server(request) -> MilvusTestServer:
    """The real Milvus server (skips the test, with the reason, when it cannot start)."""
    try:
        srv = shared_server()
    except ServerUnavailable as err:
        pytest.skip(str(err))
    if not request.config.stash.get(_CLEANUP_KEY, False):
        request.config.stash[_CLEANUP_KEY] = True
        request.config.add_cleanup(stop_shared_server)
    return srv


_CLEANUP_KEY = pytest.StashKey[bool]()


# -- corpus and store helpers shared by the scale and fault tests -------------------------------
MODEL = "solar-tiny-random"


def tiny_embedder(batch_size: int = 8):
    """The real (randomly initialised, seeded) tiny SOLAR model, on CPU, as an embedding
    function; loaded once per process."""
    if "embedder" not in _SHARED:
        from solar_milvus.ray_engine import load_embedder
        _SHARED["embedder"] = load_embedder(MODEL, batch_size=batch_size, device="cpu")
    return _SHARED["embedder"]


def make_corpus(root, n: int, seed: int = 0, prefix: str = "doc") -> set:
    """Write ``n`` documents into folder ``root`` (image+text, image-only and text-only; RGB PNGs
    of a few sizes) and return their content ids."""
    import numpy as np
    from PIL import Image

    from solar.data import content_id
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = set()
    for i in range(n):
        stem = root / f"{prefix}{seed}_{i:05d}"
        img = txt = None
        if i % 3 != 2:
            h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(f"{stem}.png")
            img = Path(f"{stem}.png").read_bytes()
        if i % 3 != 1:
            txt = f"{prefix} {seed} number {i}: {rng.integers(1 << 30)}".encode()
            Path(f"{stem}.txt").write_bytes(txt)
        ids.add(content_id(img, txt))
    return ids


def stored_ids(client, collection: str) -> list:
    """Every id in the collection (duplicates kept), read with Strong consistency."""
    out, last = [], ""
    while True:                                  # pages by key: bounded by the row count
        rows = client.query(collection, filter=f'id > "{last}"', output_fields=["id"],
                            limit=4096, consistency_level="Strong")
        if not rows:
            return out
        page = sorted(r["id"] for r in rows)
        out += page
        last = page[-1]


def read_jsonl(path) -> list:
    import json
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()
            if line.strip()]
