"""The API document (`gateway/openapi.yaml`) is valid OpenAPI and cannot drift from the app.

The live behaviour is checked against it by schemathesis (`tests/e2e/test_api_contract.py`);
these tests make sure that a route, a method or an error code added to the gateway
without its place in the document fails at once.
"""

from __future__ import annotations

import inspect
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from limits import parse
from openapi_spec_validator import validate
from quart import Quart

from gateway import errors
from tests.gateway.web.test_app import make_gateway

# Methods Quart adds by itself and the document leaves implicit (HEAD for every GET).
IMPLICIT = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # Read as the installed package sees it: the document ships as package data.
    text = files("gateway").joinpath("openapi.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@pytest.fixture
async def app(tmp_path: Path) -> Quart:
    quart_app, _, _ = await make_gateway(tmp_path, "http://127.0.0.1:9")
    return quart_app


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # raises OpenAPIValidationError with the first problem
    assert document["openapi"].startswith("3.1")


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    verbs = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in verbs
    }


def test_every_route_of_the_app_is_in_the_document_and_nothing_else(
    app: Quart, document: dict[str, Any]
) -> None:
    served = {
        (method, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - IMPLICIT
    }
    assert served == documented_operations(document)


def gateway_error_codes() -> dict[str, int]:
    """Every error code the gateway can answer with, and its status."""
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.GatewayError)
    ]
    return {cls.code: cls.status for cls in classes}


def test_every_error_code_is_documented_under_its_status(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    all_codes = set(schemas["Error"]["properties"]["code"]["enum"])
    codes = gateway_error_codes()
    assert set(codes) == all_codes
    for code, status in codes.items():
        code_schema = schemas[f"Code{status}"]["properties"]["code"]
        assert code in code_schema.get("enum", [code_schema.get("const")]), (code, status)


def test_every_documented_status_of_an_operation_has_the_security_headers(
    document: dict[str, Any],
) -> None:
    responses = document["components"]["responses"]
    required = set(document["components"]["headers"]) - {
        "WWW-Authenticate",
        "Allow",
        "Retry-After",
        "RateLimit-Policy",
        "RateLimit",
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                assert required <= set(response.get("headers", {})), (method, path, status)


@pytest.mark.parametrize("policy", ["address", "failed-auth", "principal", "principal-model"])
def test_429_documents_retry_after_and_the_ratelimit_headers_as_sent(
    document: dict[str, Any], policy: str
) -> None:
    headers = document["components"]["responses"]["RateLimited"]["headers"]
    assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= set(headers)
    item = parse("10/minute")
    exc = errors.RateLimited(
        policy=policy, quota=item.amount, window_s=item.get_expiry(), remaining=0, reset_in_s=3.2
    )
    components = document["components"]["headers"]
    for name in ("RateLimit-Policy", "RateLimit"):
        assert re.fullmatch(components[name]["schema"]["pattern"], exc.headers[name]), name
    assert exc.headers["Retry-After"] == "4"
