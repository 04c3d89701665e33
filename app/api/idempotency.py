"""The ``Idempotency-Key`` request header (IETF httpapi draft) on the avatar's POST, PATCH and
DELETE: a retry of a request whose answer was lost gets that answer, and the work is not done
again. The rules live in ``app.services.idempotency``; this module reads the header, makes the
request's fingerprint and turns a kept answer back into a response.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.deps import CurrentUser, SessionsDep, SettingsDep
from app.core.errors import InvalidIdempotencyKey
from app.services import idempotency as service

HEADER = "Idempotency-Key"
# Set on an answer given again (as Stripe and others name it); absent on the first one.
REPLAYED_HEADER = "Idempotent-Replayed"
# What a kept answer carries besides its status and body.
KEPT_HEADERS = ("content-type", "etag", "cache-control", "location")
MAX_KEY_LENGTH = 255
# The draft makes the value a Structured Field string (RFC 8941): "..." of printable ASCII
# without quote or backslash. The bare value many clients send is accepted too.
_KEY_CHARACTERS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")

_KEY_HELP = (
    "A unique value per request (a UUID), sent again unchanged on a retry: within "
    "AVATAR_IDEMPOTENCY_TTL (24 h) the retry gets the first answer and the work is not done "
    "again. The same key with another request is 422 `idempotency_key_mismatch`; a retry while "
    "the first request runs is 409 `idempotency_key_in_use`. Errors are not kept: a retry after "
    "one does the work."
)


def parse_key(value: str) -> str:
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not 0 < len(text) <= MAX_KEY_LENGTH or not _KEY_CHARACTERS.fullmatch(text):
        raise InvalidIdempotencyKey(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, e.g. "
            '"8e03978e-40d5-43e8-bc93-6894a57f9324".'
        )
    return text


def upload_parts(data: bytes, fields: dict[str, str]) -> list[bytes]:
    """An upload body as fingerprint parts: the image and the text fields, in a fixed order."""
    return [data, json.dumps(sorted(fields.items())).encode()]


def fingerprint(request: Request, parts: Iterable[bytes]) -> str:
    """SHA-256 of what makes the request this request: method, path, query and the parsed
    body (not its raw bytes, which change with a new multipart boundary on every retry)."""
    digest = hashlib.sha256()
    query = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.multi_items()))
    for part in (request.method.encode(), request.url.path.encode(), query.encode(), *parts):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Idempotency:
    request: Request
    sessions: async_sessionmaker[AsyncSession]
    user_id: str
    key: str | None
    ttl: timedelta
    lock_timeout: timedelta

    async def run(
        self, parts: Iterable[bytes], work: Callable[[], Awaitable[Response]]
    ) -> Response:
        """``work()``'s response; with a key, the kept one when this is a retry."""
        if self.key is None:
            return await work()
        sessions, user_id, key = self.sessions, self.user_id, self.key
        held = await service.claim(
            sessions=sessions,
            user_id=user_id,
            key=key,
            fingerprint=fingerprint(self.request, parts),
            ttl=self.ttl,
            lock_timeout=self.lock_timeout,
        )
        if held.response is not None:
            kept = held.response
            return Response(
                kept.body, kept.status, headers={**kept.headers, REPLAYED_HEADER: "true"}
            )
        assert held.owner is not None
        try:
            response = await work()
        except BaseException:
            await service.release(sessions=sessions, user_id=user_id, key=key, owner=held.owner)
            raise
        if 200 <= response.status_code < 300:
            kept = service.StoredResponse(
                response.status_code,
                {k: v for k, v in response.headers.items() if k in KEPT_HEADERS},
                bytes(response.body),
            )
            await service.complete(
                sessions=sessions, user_id=user_id, key=key, owner=held.owner, response=kept
            )
        else:
            await service.release(sessions=sessions, user_id=user_id, key=key, owner=held.owner)
        return response


async def get_idempotency(
    request: Request,
    user_id: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias=HEADER, description=_KEY_HELP)] = None,
) -> Idempotency:
    return Idempotency(
        request=request,
        sessions=sessions,
        user_id=user_id,
        key=parse_key(idempotency_key) if idempotency_key is not None else None,
        ttl=timedelta(seconds=settings.idempotency_ttl),
        lock_timeout=timedelta(seconds=settings.idempotency_lock_timeout),
    )


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
