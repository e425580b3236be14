"""The API contract (`gateway/openapi.yaml`) held against the live gateway by schemathesis.

Real TLS (verified against the dev CA), real scorers: the scikit-learn ``iris`` behind the
shared stack (key scoped to ``iris``) and the PyTorch ``digits`` CNN behind the torch
stack (BYTES image tensors, ``{"b64": ...}`` instances). schemathesis generates requests
from the document (its examples, boundary cases and Hypothesis fuzzing, valid and invalid
alike) and checks every answer: no server error, a documented status, a documented
content type, a body and headers that match the document, invalid requests refused,
requests without valid credentials refused.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig

from tests.conftest import ROOT, Stack, write_ratelimits
from tests.e2e import test_torch_scoring
from tests.e2e.test_torch_scoring import TorchStack

pytestmark = pytest.mark.e2e
# The digits stack of the torch e2e tests (PyTorch scorer behind its own gateway).
torch_stack = test_torch_scoring.torch_stack

SPEC = ROOT / "gateway" / "openapi.yaml"
# Bounded and reproducible: the same cases on every run, in well under a minute.
MAX_EXAMPLES = 60
SEED = 8443


# The checks and their expected statuses, as `schemathesis run` finds them, plus bounds.
CONFIG: dict[str, Any] = tomllib.loads((ROOT / "schemathesis.toml").read_text())
CONFIG |= {"seed": SEED, "request-timeout": 10}
CONFIG["generation"] |= {
    "max-examples": MAX_EXAMPLES,
    "deterministic": True,
    # Credentials come from the test (the stack's key), not from the generator.
    "with-security-parameters": False,
}

# Every operation, model names generated (mostly unknown: 404).
any_model = schemathesis.openapi.from_path(SPEC, config=SchemathesisConfig.from_dict(CONFIG))
# The model operations with the model pinned to ``iris``: the bodies reach the scorer.
iris = schemathesis.openapi.from_path(
    SPEC, config=SchemathesisConfig.from_dict({**CONFIG, "parameters": {"path.model": "iris"}})
).include(path_regex="/models/")


# The inference operations against the digits CNN (PyTorch scorer): BYTES image tensors
# and {"b64": ...} instances, generated and broken, reach the image decoder.
digits = schemathesis.openapi.from_path(
    SPEC,
    config=SchemathesisConfig.from_dict(
        {
            **CONFIG,
            "generation": {**CONFIG["generation"], "max-examples": MAX_EXAMPLES // 2},
            "parameters": {"path.model": "digits"},
        }
    ),
).include(path_regex="(infer|predict)$")


@pytest.fixture(scope="module")
def session(stack: Stack) -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def digits_session(torch_stack: TorchStack) -> Iterator[requests.Session]:
    # Its own, closed before the torch stack stops: a gateway waits out its graceful
    # timeout for a client that still holds a keep-alive connection.
    with requests.Session() as session:
        yield session


def call(case: Any, base_url: str, key: str, stack: Stack, session: requests.Session) -> None:
    case.call_and_validate(
        base_url=base_url, session=session, headers={"api-key": key}, verify=str(stack.ca)
    )


@any_model.parametrize()
def test_every_operation_conforms_to_the_document(
    case: Any, stack: Stack, session: requests.Session
) -> None:
    call(case, stack.base_url, stack.keys.iris, stack, session)


@iris.parametrize()
def test_scoring_iris_conforms_to_the_document(
    case: Any, stack: Stack, session: requests.Session
) -> None:
    call(case, stack.base_url, stack.keys.iris, stack, session)


@digits.parametrize()
def test_scoring_images_with_digits_conforms_to_the_document(
    case: Any, torch_stack: TorchStack, stack: Stack, digits_session: requests.Session
) -> None:
    call(case, torch_stack.gateway, torch_stack.key, stack, digits_session)


def test_a_real_429_conforms_to_the_document(
    spawn_gateway: Any, stack: Stack, tmp_path: Path
) -> None:
    # The shared stack's limits are generous; this gateway allows one request a minute,
    # so the second answer is a 429 whose headers and body are checked as any other.
    gateway = spawn_gateway(
        write_ratelimits(tmp_path / "ratelimits.toml", per_principal="1/minute")
    )
    operation = any_model["/v1/models/{model}:predict"]["POST"]
    statuses = []
    with requests.Session() as session:
        for _ in range(2):
            case = operation.Case(
                path_parameters={"model": "iris"},
                body={"instances": [[5.1, 3.5, 1.4, 0.2]]},
                media_type="application/json",
            )
            response = case.call_and_validate(
                base_url=gateway.base_url,
                session=session,
                headers={"api-key": stack.keys.iris},
                verify=str(stack.ca),
            )
            statuses.append(response.status_code)
    assert statuses == [200, 429]
