"""GET /models, /health and /ready."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.schemas import Health, ModelInfo, ModelList, Readiness

router = APIRouter(tags=["service"])


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    """Every model of the models directory: what it is, where it runs, how good it is."""
    out = []
    for name, m in sorted(request.app.state.models.items()):
        card = m.card or {}
        out.append(
            ModelInfo(
                name=name,
                status="ready" if m.ready else "failed",
                error=m.error,
                kind=card.get("kind"),
                parameters=card.get("parameters"),
                context=card.get("context"),
                vocabulary=(card.get("config") or {}).get("vocab_size"),
                provider=m.provider,
                provider_reason=m.provider_reason or None,
                has_attention=m.has_attention,
                metrics=card.get("metrics") or {},
            )
        )
    return ModelList(models=out)


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(request: Request) -> JSONResponse:
    """200 when every model of the models directory loaded (and there is one); 503 otherwise."""
    models = request.app.state.models
    states = {name: "ready" if m.ready else f"failed: {m.error}" for name, m in models.items()}
    ok = bool(models) and all(m.ready for m in models.values())
    return JSONResponse(
        Readiness(ready=ok, models=states).model_dump(), status_code=200 if ok else 503
    )
