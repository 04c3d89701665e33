"""A steady, bounded load on the cluster, checked as it goes.

Each simulated user runs one request at a time, in a cycle: upload, read the document, read
the image URL, re-crop, read again, and every third cycle delete and read the 404. The user
knows what its avatar should be after each answer, so every read checks that the last write
answered 2xx is what any replica now serves (the same version). Uploads and re-crops carry an
``Idempotency-Key``; one that got no answer (its replica was killed) is retried with the same
key, as a mobile client would.

The load is bounded: a deadline and a request count, whichever comes first; it stays below the
per-user rate limit, so a 429 in it is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import httpx
from PIL import Image, ImageDraw

DOCUMENTED_503 = frozenset(
    {"database_unavailable", "storage_unavailable", "server_busy", "service_unavailable"}
)
VERSION_IN_URL = re.compile(r"/avatars/([0-9a-f]{32})/")
UNKNOWN = object()  # the avatar's state after a write whose answer was lost
RETRY_BUDGET_SECONDS = 10.0


@dataclass
class Outcome:
    user: str
    op: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection reset, timeout)
    code: str | None = None
    retry_after: str | None = None
    version: str | None = None
    problem: str | None = None  # what the checks found wrong with this answer
    replayed: bool = False
    retry: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400 and self.problem is None

    @property
    def documented_503(self) -> bool:
        return self.status == 503 and self.code in DOCUMENTED_503 and bool(self.retry_after)

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


def photo(seed: int, size: tuple[int, int] = (480, 360)) -> bytes:
    """A JPEG different for every seed (shapes on a colour), cheap to make and to process."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        box = (x, y, x + rng.randrange(20, 160), y + rng.randrange(20, 160))
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


@dataclass
class User:
    user_id: str
    token: str
    limit: int  # mutations allowed per window
    window: float
    state: object = None  # the version the avatar should have; None: no avatar; or UNKNOWN
    mutations: deque[float] = field(default_factory=deque)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def may_mutate(self) -> bool:
        now = time.monotonic()
        while self.mutations and self.mutations[0] < now - self.window:
            self.mutations.popleft()
        return len(self.mutations) < self.limit - 2  # a margin for clock differences

    def count_mutation(self) -> None:
        self.mutations.append(time.monotonic())


class Load:
    def __init__(
        self,
        base_url: str,
        users: list[User],
        *,
        photos: list[bytes],
        max_requests: int,
        think: float = 0.05,
    ) -> None:
        self.base_url = base_url
        self.users = users
        self.photos = photos
        self.think = think  # seconds between a user's requests
        self.max_requests = max_requests
        self.outcomes: list[Outcome] = []
        self.stop = asyncio.Event()

    async def run(self, deadline_seconds: float) -> list[Outcome]:
        """Until ``stop`` is set, the deadline passes or the request budget is spent."""
        limits = httpx.Limits(max_connections=len(self.users) * 2)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30, limits=limits) as http:
            self.http = http
            loops = [asyncio.create_task(self._user_loop(user)) for user in self.users]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), deadline_seconds)
            self.stop.set()
            await asyncio.gather(*loops)
        return self.outcomes

    def _spent(self) -> bool:
        return self.stop.is_set() or len(self.outcomes) >= self.max_requests

    async def _user_loop(self, user: User) -> None:
        cycle = 0
        while not self._spent():
            cycle += 1
            steps = ["upload", "read", "image", "recrop", "read"]
            if cycle % 3 == 0:
                steps += ["delete", "read"]
            for step in steps:
                if self._spent():
                    return
                if step in ("upload", "recrop") and not user.may_mutate():
                    step = "read"
                if step == "recrop" and user.state is None:
                    step = "upload" if user.may_mutate() else "read"
                await getattr(self, f"_{step}")(user, cycle)
                await asyncio.sleep(self.think)

    # -- one request each, with the checks of its answer -------------------------------------

    async def _send(self, user: User, op: str, method: str, url: str, **kwargs) -> Outcome:
        started = time.monotonic()
        retried = False
        while True:
            try:
                response = await self.http.request(method, url, **kwargs)
                break
            except httpx.TransportError as exc:
                # A GET on a kept-alive connection that the balancer closed meanwhile (after a
                # 502 for a killed replica) is sent again at once, as browsers do (RFC 9110
                # 9.2.2: idempotent requests may be retried); writes are retried by the caller,
                # with their Idempotency-Key.
                if method == "GET" and not retried:
                    retried = True
                    continue
                outcome = Outcome(user.user_id, op, started, time.monotonic(), None)
                outcome.code = type(exc).__name__
                self.outcomes.append(outcome)
                return outcome
        outcome = Outcome(user.user_id, op, started, time.monotonic(), response.status_code)
        outcome.retry = retried
        outcome.retry_after = response.headers.get("retry-after")
        outcome.replayed = response.headers.get("idempotent-replayed") == "true"
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            outcome.code = response.json().get("code")
        elif response.status_code in (200, 201) and op != "image":
            outcome.version = response.json().get("version")
        elif response.status_code == 302:
            found = VERSION_IN_URL.search(response.headers["location"])
            outcome.version = found.group(1) if found else None
        self.outcomes.append(outcome)
        return outcome

    async def _mutation(self, user: User, op: str, method: str, url: str, **kwargs) -> None:
        """A write with an Idempotency-Key, retried with the same key while it gets no answer
        (or 409: the first attempt's key is still held by the replica that was killed)."""
        key = uuid.uuid4().hex
        headers = {**user.headers, "Idempotency-Key": f'"{key}"'}
        give_up = time.monotonic() + RETRY_BUDGET_SECONDS
        retry = False
        while True:
            user.count_mutation()
            outcome = await self._send(user, op, method, url, headers=headers, **kwargs)
            outcome.retry = retry
            lost = outcome.status in (None, 502, 504)
            held = outcome.code == "idempotency_key_in_use"
            if not (lost or held) or time.monotonic() > give_up or self.stop.is_set():
                break
            retry = True
            await asyncio.sleep(float(outcome.retry_after or 0.5) if held else 0.2)
        if outcome.status in (200, 201):
            user.state = outcome.version
        elif outcome.status == 204:
            user.state = None
        elif outcome.status in (None, 502, 504) or outcome.code == "idempotency_key_in_use":
            user.state = UNKNOWN
        # A documented error (503, 4xx) changed nothing: the state stays as it was.

    async def _upload(self, user: User, cycle: int) -> None:
        data = self.photos[(hash(user.user_id) + cycle) % len(self.photos)]
        files = {"file": ("photo.jpg", data, "image/jpeg")}
        await self._mutation(user, "upload", "POST", "/users/me/avatar", files=files)

    async def _recrop(self, user: User, cycle: int) -> None:
        side = 100 + (cycle % 5) * 20
        body = {"crop": f"{cycle % 7},{cycle % 5},{side},{side}"}
        await self._mutation(user, "recrop", "PATCH", "/users/me/avatar", json=body)

    async def _delete(self, user: User, cycle: int) -> None:
        await self._mutation(user, "delete", "DELETE", "/users/me/avatar")

    async def _read(self, user: User, cycle: int) -> None:
        outcome = await self._send(user, "read", "GET", f"/users/{user.user_id}/avatar")
        self._check_read(user, outcome, found=200)

    async def _image(self, user: User, cycle: int) -> None:
        outcome = await self._send(user, "image", "GET", f"/avatars/{user.user_id}?size=64")
        self._check_read(user, outcome, found=302)

    def _check_read(self, user: User, outcome: Outcome, *, found: int) -> None:
        if outcome.status == found:
            if user.state is UNKNOWN:
                user.state = outcome.version
            elif outcome.version != user.state:
                outcome.problem = f"served version {outcome.version}, expected {user.state}"
        elif outcome.status == 404 and outcome.code == "avatar_not_found":
            if user.state is UNKNOWN:
                user.state = None
            elif user.state is not None:
                outcome.problem = f"404, expected version {user.state}"


async def rate_limit_probe(
    base_url: str, token: str, *, attempts: int, photos: list[bytes]
) -> list[int | str]:
    """``attempts`` uploads by one user at once, each on a connection of its own, so that
    they spread over the replicas and all fall within the limit's window: the statuses, 2xx
    first."""
    limits = httpx.Limits(max_connections=attempts)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:

        async def upload(index: int) -> int | str:
            try:
                response = await http.post(
                    "/users/me/avatar",
                    headers={"Authorization": f"Bearer {token}"},
                    files={"file": ("p.jpg", photos[index % len(photos)], "image/jpeg")},
                )
            except httpx.TransportError as exc:
                return type(exc).__name__
            return response.status_code

        statuses = await asyncio.gather(*(upload(index) for index in range(attempts)))
    return sorted(statuses, key=str)
