"""The read -> skip -> decode stage of ingestion, running ahead of the encoder.

A producer thread reads raw records from the sources, drops those already done (in the ledger
or already stored), and decodes the rest in worker processes (in order, a bounded number of chunks
in flight).  A record whose content was seen earlier in this run is not decoded again: it is
skipped when the first one was good and quarantined with the first one's reason when it was bad.
The encoder loop pulls Document / Quarantined items from a bounded queue.  A worker that
dies (a decoder crash) costs only the record that killed it.  Workers ignore Ctrl-C (the parent
handles it) and exit by themselves when the parent process dies, even by SIGKILL.
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from solar.data import DecodeConfig, Quarantined, RawRecord, decode_many
from solar.data.records import CORRUPT_IMAGE

_END = object()
PARENT_POLL_S = 0.5


@dataclass
class Skipped:
    """A record not decoded because it is already stored."""
    id: str
    locator: str


@dataclass
class _Duplicate:
    """A record with the same content as an earlier one of this run (resolved in order)."""
    id: str
    locator: str
    source: str


def worker_init(parent_pid: int) -> None:
    """Run in each decode worker: ignore SIGINT (Ctrl-C reaches the whole process group; the
    parent stops the job) and exit as soon as the parent is gone.  A worker blocks on a queue
    whose write end it holds itself, so it never sees the parent's pipe close: a thread checks
    the parent instead (a dead parent's children are re-parented, so getppid changes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent_pid:
        os._exit(0)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="solar-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while worker processes start (main thread only, where signal dispositions
    can change): an ignored signal stays ignored in a spawned child and Python keeps it so, so a
    Ctrl-C that arrives while a worker is still importing (before worker_init runs) cannot print
    a KeyboardInterrupt traceback from it.  Starting the processes takes milliseconds."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class _Failure:
    def __init__(self, err: BaseException):
        self.err = err


class DecodePipeline:
    """Iterate over ``Skipped | Quarantined | Document``: decoded and quarantined items in
    source order, skipped ones as soon as they are found.

    sources: iterables of RawRecord; done: ids to skip (the ledger); present: a function from a
    list of ids to the subset already stored (or None); workers: decode processes (0 decodes in
    the producer thread); chunk: records per worker task; ahead: decoded items buffered.
    """

    def __init__(self, sources: Iterable, cfg: DecodeConfig, done: set,
                 present: Optional[Callable[[list], set]], workers: int = 1, chunk: int = 16,
                 ahead: int = 256):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.sources, self.cfg, self.done, self.present = sources, cfg, done, present
        self.workers, self.chunk = workers, chunk
        self._q: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._bad: dict = {}          # content id -> Quarantined, for duplicates of bad records
        self._pool: Optional[ProcessPoolExecutor] = None
        self._thread = threading.Thread(target=self._produce, name="solar-decode", daemon=True)

    def __enter__(self) -> "DecodePipeline":
        self._start()
        return self

    def _start(self) -> None:
        if not self._thread.is_alive() and self._thread.ident is None:
            self._ensure_pool()
            self._thread.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():        # unblock a producer waiting on a full queue
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._shutdown_pool()

    def __iter__(self) -> Iterator:
        self._start()
        while True:
            item = self._q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.err
            yield item

    # -- producer thread --------------------------------------------------------------------
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            inflight: list = []
            for chunk in self._chunks():
                if self._stop.is_set():
                    return
                inflight.append(self._submit(chunk))
                while len(inflight) > max(2, 2 * self.workers):
                    if not self._emit(inflight.pop(0)):
                        return
            for job in inflight:
                if not self._emit(job):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(err))

    def _chunks(self) -> Iterator[list]:
        """Raw records to decode, in chunks; skipped ones are emitted directly."""
        seen: set = set()
        pending: list = []
        for src in self.sources:
            for raw in src:
                if self._stop.is_set():
                    return
                pending.append(raw)
                if len(pending) >= 4 * self.chunk:
                    yield from self._filter(pending, seen)
                    pending = []
        yield from self._filter(pending, seen)

    def _filter(self, raws: list, seen: set) -> Iterator[list]:
        candidates = [r.id for r in raws
                      if r.problem is None and r.id not in seen and r.id not in self.done]
        stored = self.present(candidates) if self.present and candidates else set()
        keep = []
        for r in raws:
            if r.problem is None and (r.id in self.done or r.id in stored):
                if keep:
                    yield keep
                    keep = []
                self._put(Skipped(r.id, r.locator))
                continue
            if r.problem is None and r.id in seen:
                keep.append(_Duplicate(r.id, r.locator, r.source))
            else:
                if r.problem is None:
                    seen.add(r.id)
                keep.append(r)
            if len(keep) == self.chunk:
                yield keep
                keep = []
        if keep:
            yield keep

    def _submit(self, chunk: list):
        raws = [r for r in chunk if isinstance(r, RawRecord)]
        if self.workers == 0 or (chunk and not raws):
            return ("done", decode_many(raws, self.cfg), chunk)
        self._ensure_pool()
        return ("future", self._pool.submit(decode_many, raws, self.cfg), chunk)

    def _ensure_pool(self) -> None:
        """Spawned workers (isolated from decoder crashes) take seconds to start, as they
        import torch with solar: started when the pipeline opens, while the first records are
        read."""
        if self._pool is None and self.workers > 0:
            import multiprocessing as mp
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=worker_init, initargs=(os.getpid(),))
            with _sigint_ignored():           # workers are started by these submits
                for _ in range(self.workers):
                    self._pool.submit(decode_many, [], self.cfg)

    def _emit(self, job) -> bool:
        kind, value, chunk = job
        if kind == "future":
            try:
                value = value.result()
            except BrokenProcessPool:
                value = self._decode_singly(chunk)
            except Exception:  # noqa: BLE001 - e.g. a result that could not be pickled
                value = decode_many([r for r in chunk if isinstance(r, RawRecord)], self.cfg)
        for item in self._in_order(chunk, value):
            if not self._put(item):
                return False
        return True

    def _in_order(self, chunk: list, decoded: list) -> Iterator:
        """The chunk's items in source order: decoded results in place of the raw records, and
        each duplicate resolved against the first record of its content (quarantined with the
        same reason when that one was bad, else skipped)."""
        results = iter(decoded)
        for r in chunk:
            if isinstance(r, _Duplicate):
                q = self._bad.get(r.id)
                yield (Skipped(r.id, r.locator) if q is None else
                       Quarantined(r.id, r.locator, q.kind, f"{r.locator}: same content as "
                                   f"{q.locator}, which was quarantined: {q.reason}", r.source))
                continue
            item = next(results)
            if isinstance(item, Quarantined):
                self._bad[item.id] = item
            yield item

    def _decode_singly(self, chunk: list) -> list:
        """After a worker died: each record of the chunk alone in a fresh pool, so only the one
        that kills a worker again is quarantined."""
        out = []
        self._shutdown_pool()
        for raw in (r for r in chunk if isinstance(r, RawRecord)):
            try:
                out += self._submit([raw])[1].result()
            except BrokenProcessPool:
                self._shutdown_pool()
                self._check_workers_start()
                out.append(Quarantined(raw.id, raw.locator, CORRUPT_IMAGE,
                                       f"{raw.locator}: the image decoder crashed on it",
                                       raw.source))
        return out

    def _check_workers_start(self) -> None:
        """Raise when a fresh pool cannot run even an empty task (then no record is to blame)."""
        try:
            self._submit([])[1].result()
        except BrokenProcessPool:
            self._shutdown_pool()
            raise RuntimeError("decode worker processes die on start; run with workers=0, and "
                               "guard a script's entry point with if __name__ == '__main__'"
                               ) from None

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
