"""Operations endpoints: liveness, readiness, what is served, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import RegistryDep
from service.errors import RETRY
from service.registry import ModelState
from service.responses import JSONResponse
from service.schemas import Health, ModelInfo, ModelList, Readiness

router = APIRouter(tags=["status"])


# HEAD as well, for health checkers that use it; left out of the schema, which documents GET.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and answering (models may still be loading: service/middleware.py)."""
    return Health()


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(registry: RegistryDep, request: Request):
    """200 while this replica serves what MODEL_DIR holds: the models found at start-up loaded
    or rejected, at least one model live, and every live model taking requests. A model with
    no loadable version (empty, still being written, broken, or loading its first version)
    is named in `models` and `detail` but does not make it 503. 503 before that, with no model
    live, or while draining before the server stops."""
    models = registry.readiness()
    waiting = "; ".join(f"{name}: {state}" for name, state in models.items() if state != "ready")
    if request.app.state.drain.started.is_set():
        body = Readiness(ready=False, detail="draining: stopping soon", models=models)
        return JSONResponse(body.model_dump(), 503, RETRY)
    if registry.ready:
        detail = f"not serving {waiting}" if waiting else "all models ready"
        if registry.repository_problem:
            detail = f"{registry.repository_problem}: serving the models loaded; {detail}"
        return Readiness(ready=True, detail=detail, models=models)
    if not registry.scanned:
        detail = "starting"
    elif registry.repository_problem:
        detail = registry.repository_problem
    elif not models:
        detail = f"no models in {registry.settings.model_dir}"
    else:
        detail = f"not ready: {waiting or 'loading'}"
    body = Readiness(ready=False, detail=detail, models=models)
    return JSONResponse(body.model_dump(), 503, RETRY)


@router.get("/models", response_model=ModelList)
async def models(registry: RegistryDep) -> ModelList:
    """Every model found: versions on disk, the live one, labels, input and output, metrics, device,
    and the live version's calibration and model card."""
    return ModelList(models=[_info(state) for state in registry.states()])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, of all the workers of this server together."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _info(state: ModelState) -> ModelInfo:
    live = state.live
    contract = live.contract if live else None
    calibration = contract.calibration if contract else None
    return ModelInfo(
        name=state.name,
        ready=live is not None,
        status=state.problem or "ready",
        live_version=str(live.version) if live else None,
        versions=[str(v) for v in state.versions],
        pinned_version=str(state.pinned) if state.pinned is not None else None,
        rejected_versions={str(v): why for v, why in state.rejected.items()},
        kind=live.kind if live else None,
        device=live.device if live else None,
        runtime=live.runtime_name if live else None,
        tta=live.tta if live else None,
        labels=live.labels if live else None,
        input=contract.input.model_dump(mode="json", exclude_unset=True) if contract else None,
        output=contract.output.model_dump(mode="json", exclude_unset=True) if contract else None,
        metrics=contract.metrics if contract else None,
        temperature=calibration.temperature if calibration else None,
        validation_ece=calibration.after.ece if calibration and calibration.after else None,
        card=f"/models/{state.name}/card/MODEL_CARD.md" if contract and contract.card else None,
    )
