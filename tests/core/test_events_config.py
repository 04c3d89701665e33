"""``AVATAR_WEBHOOKS`` and ``AVATAR_CDN_PURGE``: read as JSON from the environment, refused with
a reason when they cannot work."""

from __future__ import annotations

import json

import pytest

from app.core.config import ConfigurationError, load_settings
from tests.webhooks import new_secret

BASE = {"_env_file": None, "public_base_url": "https://avatars.example.com"}


def test_webhooks_and_purge_come_from_json_in_the_environment(monkeypatch, tmp_path) -> None:
    old, new = new_secret(), new_secret()
    monkeypatch.setenv(
        "AVATAR_WEBHOOKS",
        json.dumps(
            [
                {"name": "chat", "url": "https://chat.example.com/h", "secret": old},
                {
                    "name": "search",
                    "url": "http://10.0.0.1/h",
                    "secret": [new, old],
                    "events": ["avatar.deleted"],
                },
            ]
        ),
    )
    monkeypatch.setenv("AVATAR_CDN_PURGE", '{"url": "{url}", "headers": {"Fastly-Key": "k"}}')
    settings = load_settings(**BASE, data_dir=tmp_path)
    chat, search = settings.webhooks
    assert chat.secret == [old] and chat.events == [
        "avatar.updated",
        "avatar.cropped",
        "avatar.deleted",
    ]
    assert search.secret == [new, old] and search.events == ["avatar.deleted"]
    assert settings.cdn_purge is not None and settings.cdn_purge.method == "PURGE"
    assert settings.cdn_purge.headers == {"Fastly-Key": "k"}


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"webhooks": [{"name": "a", "url": "https://x/h", "secret": "whsec_c2hvcnQ="}]}, "24"),
        ({"webhooks": [{"name": "a", "url": "https://x/h", "secret": "whsec_!!"}]}, "base64"),
        ({"webhooks": [{"name": "a", "url": "ftp://x/h", "secret": "S"}]}, "url"),
        ({"webhooks": [{"name": "a b", "url": "https://x/h", "secret": "S"}]}, "name"),
        ({"webhooks": [{"name": "a", "url": "https://x/h", "secret": []}]}, "secret"),
        (
            {"webhooks": [{"name": "a", "url": "https://x/h", "secret": "S", "events": ["x"]}]},
            "events",
        ),
        ({"webhooks": [{"name": "a", "url": "https://x/h", "secret": "S"}] * 2}, "name of its own"),
        ({"cdn_purge": {"url": "https://cdn.example.com/purge"}}, "{url}"),
        ({"cdn_purge": {"url": "{url}", "method": "purge"}}, "method"),
        ({"cdn_purge": {"url": "{url}"}, "public_base_url": ""}, "AVATAR_PUBLIC_BASE_URL"),
    ],
)
def test_unusable_event_settings_are_refused(values: dict, reason: str, tmp_path) -> None:
    secret = new_secret()
    for endpoint in values.get("webhooks", []):
        if endpoint["secret"] == "S":
            endpoint["secret"] = secret
    with pytest.raises(ConfigurationError) as caught:
        load_settings(**{**BASE, "data_dir": tmp_path, **values})
    assert reason in str(caught.value)
