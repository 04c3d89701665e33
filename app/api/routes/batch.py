"""Many users' avatar documents in one answer: ``GET /avatars?user_id=a&user_id=b`` and, for
lists a URL cannot carry, ``POST /avatars/lookup``. HTTP only: the ids are checked here, read
in one query by ``app.services.avatars.get_avatars``, and presented by
``app.api.presenter.build_batch``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.api.caching import client_has, etag_of
from app.api.deps import BaseUrl, SessionsDep, SettingsDep, StorageDep
from app.api.presenter import build_batch
from app.api.problems import problem_responses
from app.api.schemas import AvatarBatch
from app.api.upload import JSON_BODY_ERRORS, read_json_body
from app.core import errors
from app.core.security import MAX_USER_ID_LENGTH, USER_ID_RULES, normalize_user_id
from app.services import avatars as service

router = APIRouter(tags=["avatars"])

# One answer stays one small query and a body of a few hundred KB at most (about 2 KB a
# document).
MAX_USER_IDS = 100
USER_ID_PARAM = "user_id"
# The longest ids (255 characters of 4 UTF-8 bytes each), quoted and separated, in the JSON
# envelope with room for whitespace: 103,324 bytes. ASCII ids need a quarter of it.
LOOKUP_MAX_BYTES = MAX_USER_IDS * (4 * MAX_USER_ID_LENGTH + 3) + 1024

_RULES = (
    f"At most {MAX_USER_IDS} ids, duplicates counted; each as `GET /users/{{user_id}}/avatar` "
    f"takes it ({USER_ID_RULES}). The answer has one member per distinct id, in the order of "
    "first appearance, keyed by the id as sent (two spellings of one id, NFC and NFD, are two "
    "keys with the same document); the document, or null when the user has no avatar. "
    "Too few or too many ids and an invalid id are refused (422) before the database is asked."
)
_BATCH_HEADERS = {
    "ETag": {
        "description": "Of the whole answer: send it back in If-None-Match.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "`public, no-cache`, as the single document: revalidate every time.",
        "schema": {"type": "string"},
    },
}
_ID_ERRORS = (errors.NoUserIds, errors.TooManyUserIds, errors.InvalidUserId)


class AvatarLookup(BaseModel):
    user_ids: list[str]


def canonical_user_ids(user_ids: Sequence[str]) -> dict[str, str]:
    """Each distinct id as sent, in the order of first appearance, to its canonical form;
    the limits and the rules of a single avatar route, checked before any query."""
    if not user_ids:
        raise errors.NoUserIds(
            f"Name at least one user: ?{USER_ID_PARAM}=alice&{USER_ID_PARAM}=bob, or "
            '{"user_ids": ["alice", "bob"]} to POST /avatars/lookup.'
        )
    if len(user_ids) > MAX_USER_IDS:
        raise errors.TooManyUserIds(
            f"{len(user_ids)} user ids; at most {MAX_USER_IDS} are answered at once."
        )
    canonical: dict[str, str] = {}
    for position, user_id in enumerate(user_ids, start=1):
        if user_id in canonical:
            continue
        try:
            canonical[user_id] = normalize_user_id(user_id)
        except ValueError:
            raise errors.InvalidUserId(
                f"User id number {position} is not a valid user id: {USER_ID_RULES}."
            ) from None
    return canonical


async def _batch(
    user_ids: Sequence[str],
    *,
    sessions: SessionsDep,
    storage: StorageDep,
    base_url: str,
) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: one query for every id asked for."""
    requested = canonical_user_ids(user_ids)
    avatars = await service.get_avatars(sessions=sessions, user_ids=requested.values())
    body = build_batch(requested, avatars, storage=storage, base_url=base_url)
    data = body.model_dump_json().encode()
    return data, {"ETag": etag_of(data), "Cache-Control": "public, no-cache"}


_USER_ID_QUERY: dict[str, Any] = {
    "name": USER_ID_PARAM,
    "in": "query",
    "required": True,
    "style": "form",
    "explode": True,
    "description": f"A user id, repeated for each user: `?{USER_ID_PARAM}=alice&"
    f"{USER_ID_PARAM}=bob`. {_RULES}",
    "schema": {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_USER_IDS,
        "items": {"type": "string", "minLength": 1},
    },
}


@router.get(
    "/avatars",
    response_model=AvatarBatch,
    summary="Many users' avatar documents in one answer, public",
    description="For each user id its document or null, read with one database query, so a "
    "list of people needs one request and no 404s. A URL carries about 8 KB through most "
    "proxies (and at most AVATAR_MAX_HEADER_BYTES here): for long ids use POST "
    "/avatars/lookup. The answer has an ETag; If-None-Match gives 304.",
    openapi_extra={"parameters": [_USER_ID_QUERY]},
    responses={
        200: {"headers": _BATCH_HEADERS},
        304: {"description": "Not modified: If-None-Match matched the answer's ETag."},
        **problem_responses(*_ID_ERRORS, errors.DatabaseUnavailable),
    },
)
async def read_avatars(
    request: Request, sessions: SessionsDep, storage: StorageDep, base_url: BaseUrl
) -> Response:
    # Read from the query string, not a FastAPI parameter: its checks would answer
    # invalid_request where the ids' own codes belong.
    data, headers = await _batch(
        request.query_params.getlist(USER_ID_PARAM),
        sessions=sessions,
        storage=storage,
        base_url=base_url,
    )
    if client_has(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="application/json", headers=headers)


_LOOKUP_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["user_ids"],
                    "properties": {
                        "user_ids": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_USER_IDS,
                            "items": {"type": "string", "minLength": 1},
                            "description": _RULES,
                        }
                    },
                },
                "example": {"user_ids": ["alice", "bob"]},
            }
        },
    }
}


@router.post(
    "/avatars/lookup",
    response_model=AvatarBatch,
    summary="Many users' avatar documents in one answer, for lists too long for a URL",
    description="The same answer as `GET /avatars` (its ETag too), for a JSON body "
    f'`{{"user_ids": [...]}}` of at most {LOOKUP_MAX_BYTES} bytes. It reads and changes '
    "nothing else. An If-None-Match that names the answer's ETag gets 412 "
    "`precondition_failed`, as HTTP answers a conditional POST (GET answers 304): the "
    "client's copy is current.",
    openapi_extra=_LOOKUP_BODY,
    responses={
        200: {"headers": _BATCH_HEADERS},
        **problem_responses(
            *_ID_ERRORS,
            *JSON_BODY_ERRORS,
            errors.BodyTooLarge,
            errors.PreconditionFailed,
            errors.DatabaseUnavailable,
        ),
    },
)
async def lookup_avatars(
    request: Request,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    base_url: BaseUrl,
) -> Response:
    try:
        body = await read_json_body(
            request,
            LOOKUP_MAX_BYTES,
            idle_timeout=settings.body_idle_timeout,
            total_timeout=settings.body_timeout,
        )
    except errors.PayloadTooLarge:
        raise errors.BodyTooLarge(
            f"The body is larger than {LOOKUP_MAX_BYTES} bytes; at most {MAX_USER_IDS} ids "
            "are answered at once."
        ) from None
    try:
        lookup = AvatarLookup.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    data, headers = await _batch(
        lookup.user_ids, sessions=sessions, storage=storage, base_url=base_url
    )
    if client_has(request, headers["ETag"]):
        raise errors.PreconditionFailed(
            "If-None-Match names this answer: the documents are unchanged.", headers=headers
        )
    return Response(data, media_type="application/json", headers=headers)
