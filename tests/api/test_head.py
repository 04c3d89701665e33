"""HEAD on every route that answers GET: the same status and headers, no body."""

from __future__ import annotations

import pytest

from tests.client import files
from tests.images import jpeg_with_metadata

VARYING = {"date", "x-request-id"}


def comparable(headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in VARYING}


@pytest.mark.parametrize(
    ("path", "params", "mine"),
    [
        ("/users/alice/avatar", {}, False),
        ("/users/me/avatar", {}, True),
        ("/users/alice/avatar", {"inline": "thumb-64"}, False),
        ("/avatars/alice", {"size": 100}, False),
        ("/avatars/nobody", {"default": "identicon", "size": 48}, False),
        ("/avatars/nobody", {}, False),  # 404 problem
        ("/users/nobody/avatar", {}, False),
        ("media", {}, False),
        ("/healthz", {}, False),
        ("/avatar/constraints", {}, False),
    ],
)
async def test_head_answers_as_get_without_the_body(client, auth, path, params, mine) -> None:
    document = (
        await client.post("/users/me/avatar", headers=auth(), files=files(jpeg_with_metadata()))
    ).json()
    if path == "media":
        path = document["avatar_thumb_url"].removeprefix("http://testserver")
    headers = auth() if mine else {}
    get = await client.get(path, params=params, headers=headers)
    head = await client.head(path, params=params, headers=headers)
    assert head.status_code == get.status_code, head.text
    assert head.content == b""
    assert comparable(head.headers) == comparable(get.headers)
    assert int(head.headers["content-length"]) == len(get.content)
    if "etag" in get.headers:
        cached = await client.head(
            path, params=params, headers={**headers, "If-None-Match": get.headers["etag"]}
        )
        assert cached.status_code == 304
