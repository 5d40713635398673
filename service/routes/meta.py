"""GET /models, /health, /ready and /metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.engine import scoring_window
from runtime.kv_cache import uses_kv_cache
from service.headers import PAGE_POLICY
from service.responses import Health, ModelInfo, ModelList, Readiness, error_responses
from service.routes.common import ServingDep, require_api_key

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["service"])


@router.get(
    "/models",
    response_model=ModelList,
    dependencies=[Depends(require_api_key)],
    responses=error_responses(401),
)
async def models(serving: ServingDep) -> ModelList:
    """Every model of the models directory: what it is, where it runs, how good it is."""
    out = []
    for name, m in sorted(serving.models.items()):
        card = m.card or {}
        out.append(
            ModelInfo(
                name=name,
                status="ready" if m.ready else "failed",
                error=m.error,
                kind=card.get("kind"),
                parameters=card.get("parameters"),
                context=card.get("context"),
                score_window=scoring_window(card) if m.ready else None,
                vocabulary=(card.get("config") or {}).get("vocab_size"),
                provider=m.provider,
                provider_reason=m.provider_reason or None,
                precision=m.precision,
                has_attention=m.has_attention,
                attention_vectors=m.has_attention and m.attention_vectors,
                files_checked=m.ready and m.files_checked,
                kv_cache=m.ready and uses_kv_cache(m),
                layers=(card.get("config") or {}).get("n_layer") if m.has_attention else None,
                heads=(card.get("config") or {}).get("n_head") if m.has_attention else None,
                metrics=card.get("metrics") or {},
                training={
                    k: (card.get("training") or {}).get(k)
                    for k in ("hardware", "training_seconds", "tokens_seen", "command")
                },
            )
        )
    return ModelList(models=out)


PLAYGROUND_HEADERS = {"Content-Security-Policy": PAGE_POLICY}


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    """The playground page: compare the models and look at attention in a browser."""
    return FileResponse(STATIC / "index.html", headers=PLAYGROUND_HEADERS)


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(serving: ServingDep) -> JSONResponse:
    """200 when every model of the models directory loaded (and there is one); 503 otherwise.
    Open without the API key; with a key set, a failed model's reason is left to /models."""
    models = serving.models
    # /ready is open to all (probes carry no key): with an API key set, why a model failed,
    # which may quote paths and ONNX Runtime's internals, is for /models, behind the key.
    keyed = bool(serving.settings.api_key)
    states = {
        name: "ready"
        if m.ready
        else "failed (the reason is in /models, which needs the API key)"
        if keyed
        else f"failed: {m.error}"
        for name, m in models.items()
    }
    ok = bool(models) and all(m.ready for m in models.values())
    return JSONResponse(
        Readiness(ready=ok, models=states).model_dump(), status_code=200 if ok else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(serving: ServingDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(serving.metrics.registry), media_type=CONTENT_TYPE_LATEST)
