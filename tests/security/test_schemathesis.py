"""The service against its own OpenAPI document, fuzzed by schemathesis over real HTTP.

A real server (uvicorn in a child process) serves ``/openapi.json``; schemathesis generates
requests for every operation in it, valid ones and invalid ones (wrong types, missing or
extra fields, odd strings, wrong content types), sends them with a valid bearer token, and
checks every answer:

- ``not_a_server_error``: never a 5xx other than the documented 503s;
- ``status_code_conformance``: the status is one the operation documents;
- ``content_type_conformance`` and ``response_schema_conformance``: the body is the declared
  media type and matches its declared schema (errors: problem+json with the ``Problem`` schema);
- ``response_headers_conformance``: declared response headers are present and valid;
- ``negative_data_rejection``: a request that breaks the document is refused with a 4xx;
- ``ignored_auth``: an operation that declares bearer auth refuses the same request without it.

Examples are bounded per operation (tests/security/fuzz_settings.py: derandomized in CI).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import load_settings
from app.core.security import create_token
from app.main import create_app
from tests.images import jpeg_with_metadata
from tests.live import LiveServer, live_server
from tests.security.fuzz_settings import fuzz_settings

pytestmark = pytest.mark.server

SECRET = "schemathesis-secret-" + "z" * 40
USER = "fuzzer"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("schemathesis"), AVATAR_JWT_SECRET=SECRET, AVATAR_WORKERS="2"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def bearer(live: LiveServer) -> dict[str, str]:
    settings = load_settings(_env_file=None, jwt_secret=SECRET, data_dir=Path("."))
    headers = {"Authorization": f"Bearer {create_token(settings, USER, ttl_seconds=3600)}"}
    # The fuzzing user has an avatar to read, re-crop and delete.
    response = httpx.post(
        f"{live.base_url}/users/me/avatar",
        headers=headers,
        files={"file": ("a.jpg", jpeg_with_metadata((320, 240)), "image/jpeg")},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return headers


def openapi_document() -> dict:
    """The document the server below serves (same settings), built in-process at import:
    schemathesis's fixture-based loader does not run on this pytest (it sets a node id
    attribute pytest 9 no longer has), and its decorator needs the schema at import time."""
    settings = load_settings(
        _env_file=None, env="development", jwt_secret=SECRET, data_dir=Path("unused")
    )
    return create_app(settings).openapi()


DOCUMENT = openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
# The bearer token is ours (a valid one on every request; ``ignored_auth`` tries without it):
# schemathesis does not make up Authorization headers. Unknown query parameters are ignored by
# design (cache-busters such as ?v=2 must keep working), so they are not sent as "invalid".
schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)


def test_the_server_serves_the_document_being_fuzzed(live: LiveServer) -> None:
    assert httpx.get(f"{live.base_url}/openapi.json", timeout=10).json() == DOCUMENT


@schema.parametrize()
@fuzz_settings(max_examples=25, deadline=None)
def test_every_operation_keeps_its_documented_contract(case, live, bearer) -> None:
    case.call_and_validate(base_url=live.base_url, headers=bearer, checks=CHECKS, timeout=30)
