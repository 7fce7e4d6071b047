"""`prefetch`: the next item of an iterator computed on a worker thread while the caller handles this
one (ingest reads the next block of a file while one is parsed, and normalises blocks while the previous
one is hashed)."""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Iterator
from typing import Any


def prefetch(items: Iterator[Any]) -> Iterator[Any]:
    """`items`, with the next one computed on a second thread while the caller handles this one (for
    steps that release the GIL: reading, parsing, hashing). One item ahead of the caller, no more (a
    prefetch inside another's source adds its own one).

    Only the worker touches `items` (and closes it). Stopping never waits for the worker: an abandoned
    generator may be finalised by the garbage collector anywhere, even inside `threading`'s own locks,
    where joining a thread deadlocks; SimpleQueue.put is safe there. Workers still running when the
    interpreter exits are stopped and joined first (`_stop_workers`)."""
    requests: queue.SimpleQueue = queue.SimpleQueue()
    results: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        try:
            while requests.get():
                try:
                    item = next(items)
                except StopIteration:
                    results.put((_END, None))
                    return
                except BaseException as exc:  # noqa: BLE001 - the caller raises it
                    results.put((None, exc))
                    return
                results.put((item, None))
                item = None  # held by the caller now, not here while the next is computed
        finally:
            try:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            finally:
                _WORKERS.pop(worker, None)

    worker = threading.Thread(target=work, name="assay-ingest", daemon=True)
    _WORKERS[worker] = requests
    worker.start()
    requests.put(True)
    try:
        while True:
            item, error = results.get()
            if error is not None:
                raise error
            if item is _END:
                return
            requests.put(True)
            yield item
            item = None  # the caller is done with it: not held while the next one is awaited
    finally:
        requests.put(False)  # the worker stops after the item in hand


_END = object()
_WORKERS: dict[threading.Thread, queue.SimpleQueue] = {}


@atexit.register
def _stop_workers() -> None:
    # A daemon thread still inside pyarrow or DuckDB while the interpreter finalises is ended by
    # pthread_exit, which aborts the process ("FATAL: exception not rethrown", seen after Ctrl-C in an
    # ingest): stop and join them first. Joining is safe here, unlike in a generator's finaliser.
    workers = list(_WORKERS.items())
    for _, requests in workers:
        requests.put(False)
    for worker, _ in workers:
        worker.join(30)
