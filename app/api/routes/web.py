"""The try-it page and its development token endpoint.

Registered only with ``AVATAR_DEV_TOKENS=true``, which the settings allow only in development,
with the generated secret and no identity provider, and ``serve`` only on a loopback address.
Otherwise neither the page nor ``/dev/token`` exists (both are 404). Even when registered,
``/dev/token`` answers only clients on a loopback address.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from app.api.deps import SettingsDep
from app.api.problems import problem_responses
from app.core.errors import InvalidRequest, ResourceNotFound
from app.core.security import MAX_USER_ID_LENGTH, create_token, is_loopback_address

STATIC = Path(__file__).resolve().parents[2] / "web" / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# The page loads only its own script and style; images may come from the storage's origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: https: http:; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["development"])


class DevTokenRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LENGTH, examples=["demo-user"])


class DevToken(BaseModel):
    user_id: str
    token: str
    token_type: str = "Bearer"
    expires_in: int


@router.get("/", include_in_schema=False)
async def try_page() -> Response:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers=PAGE_HEADERS,
    )


@router.get("/try/{name}", include_in_schema=False)
async def try_asset(name: str) -> Response:
    if name not in ASSETS:
        raise ResourceNotFound("No such file.")
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name], headers=PAGE_HEADERS)


@router.post(
    "/dev/token",
    response_model=DevToken,
    summary="A token for any user (AVATAR_DEV_TOKENS=true only, loopback clients only)",
    responses=problem_responses(InvalidRequest, ResourceNotFound),
)
async def create_dev_token(
    request: Request, body: DevTokenRequest, settings: SettingsDep
) -> DevToken:
    # The server may be reached through a proxy on this machine: the proxy headers (trusted
    # from loopback only) then name the real client, which must be local too.
    if request.client is None or not is_loopback_address(request.client.host):
        raise ResourceNotFound("Development tokens are given to clients on this machine only.")
    try:
        token = create_token(settings, body.user_id)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return DevToken(user_id=body.user_id, token=token, expires_in=settings.token_ttl_seconds)
