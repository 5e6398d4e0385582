"""Operations endpoints: liveness, readiness, what is served, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import RegistryDep
from service.registry import ServedModel
from service.schemas import Health, ModelInfo, ModelList, Readiness

router = APIRouter(tags=["status"])


# HEAD as well, for health checkers that use it; left out of the schema, which documents GET.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and answering (models may still be loading: service/loading.py)."""
    return Health()


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(registry: RegistryDep, request: Request):
    """200 once every model found is loaded and warmed up; 503 naming those that are not, or
    saying that the server is draining before it stops."""
    models = registry.readiness()
    waiting = {name: state for name, state in models.items() if state != "ready"}
    if request.app.state.drain.started.is_set():
        body = Readiness(ready=False, detail="draining: stopping soon", models=models)
        return JSONResponse(body.model_dump(), 503, {"Retry-After": "1"})
    if registry.ready:
        return Readiness(ready=True, detail="all models ready", models=models)
    if not registry.scanned:
        detail = "starting"
    elif not models:
        detail = f"no models in {registry.settings.model_dir}"
    else:
        detail = "not ready: " + "; ".join(f"{name}: {state}" for name, state in waiting.items())
    body = Readiness(ready=False, detail=detail, models=models)
    return JSONResponse(body.model_dump(), 503, {"Retry-After": "1"})


@router.get("/models", response_model=ModelList)
async def models(registry: RegistryDep) -> ModelList:
    """Every model found: versions on disk, the live one, labels, input and output, metrics, device,
    and the live version's calibration and model card."""
    return ModelList(models=[_info(served) for _, served in sorted(registry.models.items())])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, of all the workers of this server together."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _info(served: ServedModel) -> ModelInfo:
    live = served.predictor
    meta = live.metadata if live else {}
    calibration = meta.get("calibration") or {}
    return ModelInfo(
        name=served.name,
        ready=live is not None,
        status=served.problem or "ready",
        live_version=str(live.version) if live else None,
        versions=[str(v) for v in served.versions],
        pinned_version=str(served.pinned) if served.pinned is not None else None,
        rejected_versions={str(v): why for v, why in served.failed.items()},
        kind=live.kind if live else None,
        device=live.device if live else None,
        labels=live.labels if live else None,
        input=meta.get("input"),
        output=meta.get("output"),
        metrics=meta.get("metrics"),
        temperature=calibration.get("temperature"),
        validation_ece=calibration.get("after", {}).get("ece"),
        card=f"/models/{served.name}/card/MODEL_CARD.md" if live and meta.get("card") else None,
    )
