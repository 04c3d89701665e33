from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SelfTestDep, SessionsDep, StorageDep
from app.api.schemas import HealthStatus
from app.core.errors import AppError
from app.db.session import READ_ONLY

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthStatus,
    response_model_exclude_none=True,
    summary="The process is alive",
)
async def healthz() -> HealthStatus:
    return HealthStatus(status="ok")


@router.get(
    "/readyz",
    response_model=HealthStatus,
    response_model_exclude_none=True,
    summary="The database and the storage are reachable",
    responses={503: {"model": HealthStatus, "description": "A dependency is not reachable."}},
)
async def readyz(
    sessions: SessionsDep,
    storage: StorageDep,
    selftest: SelfTestDep,
    deep: Annotated[
        bool,
        Query(
            description="Also run bundled tricky images through the live codecs: at most once "
            "per AVATAR_SELFTEST_INTERVAL, beside the upload pool; in between, the last report."
        ),
    ] = False,
) -> HealthStatus | JSONResponse:
    checks: dict[str, str] = {}
    images: dict[str, dict[str, object]] = {}
    if deep:
        try:
            images = await selftest.report()
        except AppError as exc:  # the pool is full: the replica is busy, not broken
            checks["imaging"] = f"unavailable ({exc.code})"
        else:
            failed = [name for name, report in images.items() if report["status"] != "ok"]
            checks["imaging"] = "ok" if not failed else f"failed ({', '.join(failed)})"
    try:
        async with sessions() as session:
            await session.connection(**READ_ONLY)  # a busy writer is no reason to look down
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable ({type(exc).__name__})"
    try:
        await storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"unavailable ({type(exc).__name__})"
    result = HealthStatus(
        status="ok" if all(v == "ok" for v in checks.values()) else "unavailable",
        checks=checks,
        images=images or None,
    )
    if result.status != "ok":
        return JSONResponse(result.model_dump(exclude_none=True), status_code=503)
    return result
