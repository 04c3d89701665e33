from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionsDep, StorageDep
from app.api.schemas import HealthStatus

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthStatus, summary="The process is alive")
async def healthz() -> HealthStatus:
    return HealthStatus(status="ok")


@router.get(
    "/readyz",
    response_model=HealthStatus,
    summary="The database and the storage are reachable",
    responses={503: {"model": HealthStatus, "description": "A dependency is not reachable."}},
)
async def readyz(sessions: SessionsDep, storage: StorageDep) -> HealthStatus | JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with sessions() as session:
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
        status="ok" if all(v == "ok" for v in checks.values()) else "unavailable", checks=checks
    )
    if result.status != "ok":
        return JSONResponse(result.model_dump(), status_code=503)
    return result
