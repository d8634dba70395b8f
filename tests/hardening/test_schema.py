"""schemathesis against the service's own /openapi.json, every route: whatever it generates, never a 5xx.

Driven through schemathesis' Hypothesis strategies, one test per route (its pytest plugin predates pytest 9).
"""

from __future__ import annotations

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from schemathesis import BaseSchema, Case
from schemathesis.checks import not_a_server_error
from schemathesis.openapi import from_url

from harness.service import ServiceProcess

pytestmark = pytest.mark.integration

# enough to reach every field and enum of a route, in seconds per route on a 2-core CI machine
EXAMPLES_PER_ROUTE = 25
ROUTES = [
    ("POST", "/transcribe"),
    ("POST", "/detect-language"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/audio/translations"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("DELETE", "/v1/jobs/{job_id}"),
    ("GET", "/v1/jobs/{job_id}/result"),
    ("GET", "/health"),
    ("GET", "/health/jobs"),
    ("GET", "/info"),
    ("GET", "/"),
]


@pytest.fixture(scope="module")
def openapi_schema(hardened: ServiceProcess) -> BaseSchema:
    return from_url(f"{hardened.url}/openapi.json", headers=hardened.auth_headers)


def test_the_schema_describes_every_route_and_upload_form(openapi_schema: BaseSchema, hardened: ServiceProcess) -> None:
    document = requests.get(f"{hardened.url}/openapi.json", headers=hardened.auth_headers, timeout=10).json()
    described = [(method.upper(), path) for path, operations in document["paths"].items() for method in operations]
    assert sorted(described) == sorted(ROUTES), "a new route needs a line in ROUTES (and app/web/routes.py ROUTES)"
    for method, path in ROUTES:
        if method == "POST":
            form = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
            assert form["properties"]["file"]["format"] == "binary" and form["required"] == ["file"]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_generated_request_gets_a_server_error(
    openapi_schema: BaseSchema, hardened: ServiceProcess, method: str, path: str
) -> None:
    operation = openapi_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(case: Case) -> None:
        response = case.call(headers=hardened.auth_headers, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])

    call()
