"""What the service tells the rest of the system when an avatar changes, and how.

An event is a row of the outbox (``OutboxEvent``), inserted by the unit of work
(``app.services.avatars``) in the transaction that changes the avatar row. The dispatcher
(``app.services.outbox``) sends it to each target configured when it routes the event:

- a webhook endpoint (``AVATAR_WEBHOOKS``): a JSON body signed per the Standard Webhooks
  specification by its ``standardwebhooks`` library, once with every secret of the endpoint
  (two while a secret is rotated), the event id as ``webhook-id`` (the idempotency key);
- the CDN purge (``AVATAR_CDN_PURGE``): one request per unversioned URL of the avatar.

Versioned object URLs (``/media/avatars/<version>/...``) never change bytes, so only the URLs
that name a user rather than a version are purged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from standardwebhooks.webhooks import Webhook

from app.core.config import CdnPurge, EventType, Settings, WebhookEndpoint
from app.db.models import OutboxEvent, utcnow

USER_AGENT = "avatar-service-events/1"


def outbox_event(
    event_type: EventType, user_id: str, version: str | None, previous_version: str | None
) -> OutboxEvent:
    """The outbox row of one change; add it to the session that changes the avatar."""
    return OutboxEvent(
        id=f"evt_{uuid.uuid4().hex}",
        type=event_type,
        user_id=user_id,
        version=version,
        previous_version=previous_version,
        occurred_at=utcnow(),
    )


def document_url(public_base_url: str, user_id: str) -> str:
    """The public avatar document of a user (``GET /users/{user_id}/avatar``)."""
    return f"{public_base_url}/users/{quote(user_id, safe='')}/avatar"


def unversioned_urls(public_base_url: str, user_id: str) -> list[str]:
    """The URLs that name the user rather than a version: what a CDN must forget."""
    return [
        f"{public_base_url}/avatars/{quote(user_id, safe='')}",
        document_url(public_base_url, user_id),
    ]


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_payload(event: OutboxEvent, public_base_url: str) -> dict[str, Any]:
    """The webhook body: the Standard Webhooks envelope (type, timestamp, data) and the id."""
    data: dict[str, Any] = {
        "user_id": event.user_id,
        "version": event.version,
        "previous_version": event.previous_version,
    }
    if event.type != "avatar.deleted":
        data["url"] = document_url(public_base_url, event.user_id)
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": _timestamp(event.occurred_at),
        "data": data,
    }


def _schema(event_type: EventType, *, deleted: bool) -> dict[str, Any]:
    version = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
    nullable_version = {"type": ["string", "null"], "pattern": "^[0-9a-f]{32}$"}
    data: dict[str, Any] = {
        "type": "object",
        "required": ["user_id", "version", "previous_version"],
        "properties": {
            "user_id": {"type": "string", "minLength": 1, "maxLength": 255},
            "version": {"type": "null"} if deleted else version,
            "previous_version": version if deleted else nullable_version,
        },
        "additionalProperties": False,
    }
    if not deleted:
        data["required"].append("url")
        data["properties"]["url"] = {"type": "string", "format": "uri"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": event_type,
        "type": "object",
        "required": ["id", "type", "timestamp", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^evt_[0-9a-f]{32}$"},
            "type": {"const": event_type},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": data,
        },
        "additionalProperties": False,
    }


# One JSON Schema per event type; the README shows each (a test checks they agree).
EVENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "avatar.updated": _schema("avatar.updated", deleted=False),
    "avatar.cropped": _schema("avatar.cropped", deleted=False),
    "avatar.deleted": _schema("avatar.deleted", deleted=True),
}


class DeliveryFailed(Exception):
    """A target did not take the event: refused, unreachable, too slow or redirected."""


class Target(Protocol):
    """Where deliveries go: a webhook endpoint or the CDN purge."""

    @property
    def key(self) -> str:
        """What the deliveries to it are recorded under."""
        ...

    def wants(self, event_type: str) -> bool: ...

    def requests(self) -> int:
        """Requests per delivery (the lease on a delivery covers them all)."""
        ...

    async def deliver(
        self, client: httpx.AsyncClient, event: OutboxEvent, public_base_url: str
    ) -> None: ...


async def _send(client: httpx.AsyncClient, request: httpx.Request) -> None:
    """One request; only a 2xx answer counts. Redirects are never followed (the client is made
    with ``follow_redirects=False``): a receiver that moved is a failure to look at."""
    try:
        response = await client.send(request)
    except httpx.TimeoutException as exc:
        raise DeliveryFailed(f"timed out ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:300]) from None
    if not 200 <= response.status_code < 300:
        location = response.headers.get("location")
        moved = f" (redirect to {location[:200]}, not followed)" if location else ""
        raise DeliveryFailed(f"HTTP {response.status_code}{moved}")


@dataclass(frozen=True)
class WebhookTarget:
    endpoint: WebhookEndpoint

    @property
    def key(self) -> str:
        return f"webhook:{self.endpoint.name}"

    def wants(self, event_type: str) -> bool:
        return event_type in self.endpoint.events

    def requests(self) -> int:
        return 1

    def signed_request(self, event: OutboxEvent, public_base_url: str) -> httpx.Request:
        body = json.dumps(event_payload(event, public_base_url), separators=(",", ":"))
        sent_at = datetime.now(UTC)
        # The specification's signature list: "v1,<sig> v1,<sig>", one per secret, so a
        # receiver holding either the old or the new secret verifies during a rotation.
        signatures = " ".join(
            Webhook(secret).sign(event.id, sent_at, body) for secret in self.endpoint.secret
        )
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signatures,
        }
        return httpx.Request("POST", self.endpoint.url, content=body.encode(), headers=headers)

    async def deliver(
        self, client: httpx.AsyncClient, event: OutboxEvent, public_base_url: str
    ) -> None:
        await _send(client, self.signed_request(event, public_base_url))


@dataclass(frozen=True)
class PurgeTarget:
    template: CdnPurge
    key: str = "cdn-purge"

    def wants(self, event_type: str) -> bool:
        return event_type in self.template.events

    def requests(self) -> int:
        return len(unversioned_urls("", "-"))

    def purge_requests(self, user_id: str, public_base_url: str) -> list[httpx.Request]:
        made = []
        for url in unversioned_urls(public_base_url, user_id):

            def fill(text: str, url: str = url) -> str:
                return text.replace("{url_quoted}", quote(url, safe="")).replace("{url}", url)

            headers = {name: fill(value) for name, value in self.template.headers.items()}
            headers.setdefault("user-agent", USER_AGENT)
            made.append(
                httpx.Request(self.template.method, fill(self.template.url), headers=headers)
            )
        return made

    async def deliver(
        self, client: httpx.AsyncClient, event: OutboxEvent, public_base_url: str
    ) -> None:
        for request in self.purge_requests(event.user_id, public_base_url):
            await _send(client, request)


def configured_targets(settings: Settings) -> Mapping[str, Target]:
    """The targets of the settings, by the key their deliveries are recorded under."""
    targets: list[Target] = [WebhookTarget(endpoint) for endpoint in settings.webhooks]
    if settings.cdn_purge is not None:
        targets.append(PurgeTarget(settings.cdn_purge))
    return {target.key: target for target in targets}
