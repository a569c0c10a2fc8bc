"""The three ways to reach a collection, behind one fixture: embedded (``shoal.open``), remote
(a real uvicorn server on 127.0.0.1 through ``shoal.Client``) and sharded (``shoal.ray`` on a
local Ray). Every test in tests/contract runs over all three."""

from __future__ import annotations

import itertools

import pytest

import shoal
from tests.server.conftest import LiveServer

_names = itertools.count()


class Backend:
    """Creates collections of one kind; ``kind`` is embedded, remote or sharded."""

    def __init__(self, kind: str, tmp_path_factory) -> None:
        self.kind = kind
        self.root = tmp_path_factory.mktemp(kind)
        self._open: list = []
        if kind == "embedded":
            self.db = shoal.open(self.root / "db")
        elif kind == "remote":
            self.server = LiveServer(shoal.open(self.root / "served"))
            self.db = shoal.Client(self.server.url)
        else:
            import ray

            import shoal.ray as sray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            self.sray = sray

    def create(self, dim: int = 8, metric: str = "l2", **options):
        name = f"c{next(_names)}"
        if self.kind == "sharded":
            col = self.sray.create_collection(name, dim=dim, metric=metric, shards=2, path=str(self.root),
                                              **options)
            self._open.append(col)
            return col
        return self.db.create_collection(name, dim=dim, metric=metric, **options)

    def close(self) -> None:
        if self.kind == "embedded":
            self.db.close()
        elif self.kind == "remote":
            self.db.close()
            self.server.stop()
        else:
            import ray

            for col in self._open:
                col.close()
            ray.shutdown()


KINDS = ["embedded", "remote", "sharded"]


@pytest.fixture(scope="module", params=KINDS)
def backend(request, tmp_path_factory):
    if request.param == "sharded":
        pytest.importorskip("ray")
    b = Backend(request.param, tmp_path_factory)
    yield b
    b.close()
