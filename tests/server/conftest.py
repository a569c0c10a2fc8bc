"""A real uvicorn server on a free port of 127.0.0.1, in a thread of the test process."""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn

import shoal
from shoal.server import create_app


class LiveServer:
    def __init__(self, db: shoal.Database, **options) -> None:
        self.db = db
        app = create_app(db, **options)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.db.close()


@pytest.fixture
def live_server(tmp_path):
    """Factory: start a server over a new database with the given options."""
    servers = []

    def start(**options) -> LiveServer:
        srv = LiveServer(shoal.open(tmp_path / f"served-{len(servers)}"), **options)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture(params=["embedded", "remote"])
def database(request, tmp_path, live_server):
    """The same collection API, embedded (shoal.open) or over HTTP (shoal.Client)."""
    if request.param == "embedded":
        db = shoal.open(tmp_path / "embedded")
        yield db
        db.close()
    else:
        client = shoal.Client(live_server().url)
        yield client
        client.close()
