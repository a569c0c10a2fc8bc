"""Checks shared by the durability tests."""

from __future__ import annotations

import numpy as np


def state(db) -> dict:
    """What the database holds, read through the public API: every collection's points."""
    out = {}
    for name in db.list_collections():
        col = db.get_collection(name)
        points = {}
        for ids, vectors, payloads in col.scan():
            for key, v, p in zip(ids, vectors, payloads):
                points[key] = (tuple(v.tolist()), p)
        assert col.count() == len(points)
        keys = list(points)
        for key, got in zip(keys, col.get(keys) if keys else []):  # get agrees with scan
            assert got is not None and (tuple(got["vector"].tolist()), got["payload"]) == points[key]
            if got["document"] is not None:
                points[key] = (*points[key], got["document"])
        for key in keys[:5]:  # and search finds each point where it is
            hits = col.search(np.array(points[key][0], np.float32), k=1, ef=64)
            assert hits and hits[0].distance <= 1e-5
            if len(points[key]) > 2:  # and keyword search finds its document, once
                found = col.search(text=points[key][2], k=len(points), mode="keyword", with_document=True)
                assert [h.document for h in found].count(points[key][2]) == 1
        out[name] = points
    return out


def race(write, read, readers: int = 2, timeout: float = 300) -> list[BaseException]:
    """Run ``write()`` once in a thread and ``read(done)`` in ``readers`` threads until it has
    finished (``done`` is a ``threading.Event``); returns what any of them raised."""
    import threading

    done = threading.Event()
    errors: list[BaseException] = []

    def guard(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)
        finally:
            if fn is write:
                done.set()

    threads = [threading.Thread(target=guard, args=(read, done)) for _ in range(readers)]
    threads.append(threading.Thread(target=guard, args=(write,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors
