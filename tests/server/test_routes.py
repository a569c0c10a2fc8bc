"""Every route of the server's schema under every key, the schema fuzzer against a collection
with points and keys set, and many clients at once against a model."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

import shoal
from tests.server.conftest import LiveServer
from tests.server.test_fuzz import CHECKS

RW, RO = "rw-secret", "ro-secret"

#: (method, path) -> (writes?, a valid body). Every route in the schema must be here: a new
#: route fails test_every_route_answers_each_key_as_documented until it is classified.
ROUTES = {
    ("GET", "/healthz"): (None, None),
    ("GET", "/collections"): (False, None),
    ("PUT", "/collections/{name}"): (True, {"dim": 2}),
    ("GET", "/collections/{name}"): (False, None),
    ("PUT", "/collections/{name}/points"): (True, {"ids": [9], "vectors": [[0.5, 0.5]]}),
    ("POST", "/collections/{name}/points/get"): (False, {"ids": [1]}),
    ("POST", "/collections/{name}/points/delete"): (True, {"ids": [9]}),
    ("POST", "/collections/{name}/points/count"): (False, {}),
    ("POST", "/collections/{name}/points/scan"): (False, {"limit": 5}),
    ("POST", "/collections/{name}/search"): (False, {"vector": [1.0, 0.0], "k": 1}),
    ("POST", "/collections/{name}/checkpoint"): (True, None),
    ("POST", "/collections/{name}/compact"): (True, None),
    ("POST", "/collections/{name}/payload-index"): (True, {"field": "x"}),
    ("DELETE", "/collections/{name}"): (True, None),
}


@pytest.fixture
def keyed_server(tmp_path):
    srv = LiveServer(shoal.open(tmp_path / "db"), api_key=RW, read_only_api_key=RO)
    yield srv
    srv.stop()


def _seed(url: str, name: str = "c") -> None:
    with shoal.Client(url, api_key=RW) as client:
        if name not in client.list_collections():
            client.create_collection(name, dim=2).upsert([1, "a"], [[1.0, 0.0], [0.0, 1.0]], [{"x": 1}, None])


def test_every_route_answers_each_key_as_documented(keyed_server):
    schema = httpx.get(f"{keyed_server.url}/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert routes == set(ROUTES), f"routes not classified here: {routes - set(ROUTES)}; gone: {set(ROUTES) - routes}"
    order = sorted(ROUTES, key=lambda r: (r == ("DELETE", "/collections/{name}"), r[1], r[0]))
    checked = 0
    for key, who in ((None, "no key"), (RO, "read-only key"), (RW, "read-write key")):
        for method, path in order:
            writes, body = ROUTES[(method, path)]
            name = "fresh" if (method, path) == ("PUT", "/collections/{name}") else "c"
            _seed(keyed_server.url)
            headers = {} if key is None else {"api-key": key}
            r = httpx.request(method, keyed_server.url + path.format(name=name), json=body, headers=headers)
            if writes is None:
                want = 200
            elif key is None:
                want = 401
            elif key == RO and writes:
                want = 403
            else:
                want = 200
            assert r.status_code == want, f"{method} {path} with {who}: {r.status_code} {r.text[:200]}"
            if want >= 400:
                assert r.json()["error"]["type"] == {401: "AuthenticationError", 403: "ReadOnlyError"}[want]
            checked += 1
            if (method, path) == ("PUT", "/collections/{name}") and r.status_code == 200:
                with shoal.Client(keyed_server.url, api_key=RW) as client:
                    client.drop_collection("fresh")
    assert checked == 3 * len(ROUTES)


def test_the_fuzzer_against_a_collection_with_points_and_keys(keyed_server):
    """The generated requests go to an existing collection (recreated when a case dropped it),
    with the read-write key: they reach the handlers instead of stopping at 401 or 404."""
    api = schemathesis.openapi.from_url(f"{keyed_server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    statuses: dict[int, int] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            _seed(keyed_server.url)
            if case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = "c"
            response = case.call_and_validate(checks=CHECKS, headers={"api-key": RW})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        check()
    reached = sum(n for code, n in statuses.items() if code < 300)
    print(f"fuzzer statuses: {dict(sorted(statuses.items()))}")
    assert reached >= len(operations) * 3, statuses  # most operations were really exercised
    assert not any(code >= 500 for code in statuses), statuses


def test_many_clients_at_once_match_a_model(tmp_path):
    srv = LiveServer(shoal.open(tmp_path / "db", policy=shoal.Policy(seal_rows=300, checkpoint_min_rows=100,
                                                                       compact_min_rows=200)))
    try:
        with shoal.Client(srv.url) as client:
            client.create_collection("c", dim=4, metric="l2")
        models: list[dict] = [{} for _ in range(4)]
        errors: list[BaseException] = []

        def work(t: int) -> None:
            rng = np.random.default_rng(t)
            model = models[t]
            try:
                with shoal.Client(srv.url) as client:
                    col = client.get_collection("c")
                    for r in range(25):
                        keys = [t * 10_000 + int(k) for k in rng.choice(200, 10, replace=False)]
                        x = rng.standard_normal((10, 4)).astype(np.float32)
                        col.upsert(keys, x, [{"t": t, "r": r}] * 10)
                        model.update({k: v for k, v in zip(keys, x)})
                        older = [k for k in model if k not in keys]
                        if r % 3 == 0 and len(older) >= 3:
                            assert col.delete(older[:3]) == 3
                            for k in older[:3]:
                                del model[k]
                        hits = col.search(x[0], k=1, ef=64)
                        assert hits and hits[0].distance <= 1e-4 and hits[0].id == keys[0]
                        if t == 0 and r % 8 == 7:
                            col.compact()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        assert not errors, errors[:3]
        with shoal.Client(srv.url) as client:
            col = client.get_collection("c")
            want = {k: v for m in models for k, v in m.items()}
            assert col.count() == len(want)
            got = col.get(list(want))
            for (k, v), g in zip(want.items(), got):
                np.testing.assert_array_equal(g["vector"], v)
    finally:
        srv.stop()
