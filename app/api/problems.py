"""One renderer for every error: RFC 9457 problem+json with a stable ``code``."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import (
    PROBLEM_TYPE_PREFIX,
    AppError,
    DatabaseUnavailable,
    InvalidRequest,
    MethodNotAllowed,
    ResourceNotFound,
    StorageUnavailable,
)
from app.storage.base import StoreError

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem(error: AppError, **extra: Any) -> ProblemResponse:
    body = {**error.problem_fields(), **extra}
    return ProblemResponse(body, status_code=error.status, headers=error.headers)


def _from_http_exception(exc: StarletteHTTPException) -> AppError:
    if exc.status_code == 404:
        return ResourceNotFound("No such resource.")
    if exc.status_code == 405:
        return MethodNotAllowed("This method is not allowed on this resource.")
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8 JSON)
        return InvalidRequest(f"The request body cannot be parsed: {exc.detail}")
    generic = AppError(str(exc.detail))
    generic.status = exc.status_code  # type: ignore[misc]
    return generic


def render(request: Request, error: AppError, **extra: Any) -> ProblemResponse:
    request.state.error_code = error.code  # for the request log line and the metrics
    return problem(error, **extra)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_app_error(request: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, AppError)
        return render(request, exc)

    async def on_http_exception(request: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, StarletteHTTPException)
        return render(request, _from_http_exception(exc))

    async def on_validation_error(request: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in exc.errors()
        ]
        return render(request, InvalidRequest("The request is not valid."), errors=errors)

    async def on_database_error(request: Request, exc: Exception) -> ProblemResponse:
        logger.error("database error: %s", type(exc).__name__)
        return render(request, DatabaseUnavailable("The database is not available; retry later."))

    async def on_timeout(request: Request, exc: Exception) -> ProblemResponse:
        # Storage, body and identity-provider timeouts are turned into their own errors where
        # they happen; what arrives here is a database statement that ran out of time.
        logger.error("timeout: %s", type(exc).__name__)
        error = DatabaseUnavailable("The database did not answer in time; retry later.")
        return render(request, error)

    async def on_storage_error(request: Request, exc: Exception) -> ProblemResponse:
        logger.error("storage error: %s", exc)
        error = StorageUnavailable("The image store is not available; retry later.")
        return render(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> ProblemResponse:
        logger.exception("unexpected error")
        return render(request, AppError("An unexpected error occurred."))

    app.add_exception_handler(AppError, on_app_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(SQLAlchemyError, on_database_error)
    app.add_exception_handler(TimeoutError, on_timeout)
    app.add_exception_handler(StoreError, on_storage_error)
    app.add_exception_handler(Exception, on_unexpected)
    _document_validation_problems(app)


def _document_validation_problems(app: FastAPI) -> None:
    """FastAPI documents its own 422 (request validation) as ``application/json`` with
    ``HTTPValidationError``; ``on_validation_error`` sends problem+json: say so in the
    OpenAPI document, so that it describes what clients really get."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = generate()
        if not fresh:
            return schema
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
                media = responses.get("422", {}).get("content", {}).get("application/json", {})
                if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    responses["422"] = problem_responses(InvalidRequest)[422]
        if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route: each status with the codes it can carry."""
    by_status: dict[int, list[type[AppError]]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, classes in sorted(by_status.items()):
        codes = ", ".join(f"`{cls.code}`" for cls in classes)
        first = classes[0]
        responses[status] = {
            "description": f"{first.title} ({codes})",
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": {
                        "type": PROBLEM_TYPE_PREFIX + first.code,
                        "title": first.title,
                        "status": status,
                        "detail": first.title + ".",
                        "code": first.code,
                    },
                }
            },
        }
    return responses
