"""Fuzz the real server from its own OpenAPI schema (schemathesis): no request gives a 500,
and every response is one the schema documents."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import LiveServer

import shoal


# No 500s, and every status, content type and body is the one the schema documents. (Not
# "schema-valid data is accepted": the generator sends int64 bounds through floats.)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    srv = LiveServer(shoal.open(tmp_path_factory.mktemp("fuzz") / "db"), max_body_bytes=1 << 20)
    with shoal.Client(srv.url) as client:  # something for the generated requests to find
        client.create_collection("c", dim=2).upsert([1, "a"], [[1.0, 0.0], [0.0, 1.0]], [{"x": 1}, None])
    yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    srv.stop()


def test_api(api_schema):
    """Every operation, 25 generated requests each (schemathesis's pytest plugin does not run
    under pytest 9 yet, so the operations are driven here with hypothesis directly)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(checks=CHECKS)

        check()
