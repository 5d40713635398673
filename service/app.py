"""The FastAPI application: models loaded once in the lifespan, routers, guards, errors."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.check import probe
from runtime.deadline import Drain
from runtime.engine import Engine
from runtime.loader import LoadedModel, load_models
from service.ab import parse_weights
from service.ab_store import Store
from service.admission import Admission
from service.docs_pages import DOCS_URL, REDOC_URL, DocsPolicy
from service.errors import error_body, install_error_handlers
from service.headers import HeadGuard, JSONCORSMiddleware, SecurityHeaders
from service.limits import RequestLimits, configured_openapi
from service.memory import limit_malloc_arenas
from service.observability import Metrics, RequestContext
from service.routes import compare, experiment, inference, meta, openai, tokens
from service.settings import Settings

log = logging.getLogger("service.app")


class BodyGuard:
    """Pure ASGI middleware for requests with a body: JSON content type (415), size limit (413),
    time to send it (408), UTF-8 (400). Checked before FastAPI parses anything."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, paths: frozenset[str], timeout: float = 30.0
    ) -> None:
        self.app, self.max_bytes, self.paths, self.timeout = app, max_bytes, paths, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only the JSON endpoints: anything else goes on to its 404 or 405.
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        # A rejection here comes before routing: the access log and metrics still name the path.
        scope.setdefault("state", {})["path"] = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            await _reject(
                send,
                415,
                "unsupported_media_type",
                f"send the body as application/json, not {media or 'no content type'!r}",
                unread=True,
            )
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _reject(
                send,
                413,
                "payload_too_large",
                f"the body has {declared} bytes; the limit is {self.max_bytes}",
                unread=True,
            )
            return
        chunks, size, more = [], 0, True
        # uvicorn waits for a body as long as its client takes: a client that trickles one (or
        # stops) would hold its connection, and its memory, for ever.
        with anyio.move_on_after(self.timeout):
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    await _reject(
                        send,
                        413,
                        "payload_too_large",
                        f"the body is over the limit of {self.max_bytes} bytes",
                        unread=True,
                    )
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
        if more:
            await _reject(
                send,
                408,
                "request_timeout",
                f"the body did not arrive within {self.timeout:g} s "
                f"({size} bytes came{f' of {declared}' if declared.isdigit() else ''})",
                unread=True,
            )
            return
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await _reject(
                send,
                400,
                "invalid_utf8",
                f"the body is not valid UTF-8 (byte {exc.start}): JSON must be UTF-8",
            )
            return
        if not body.strip():  # FastAPI would call it a missing field of nothing in particular
            await _reject(
                send,
                400,
                "invalid_json",
                "the body is empty: send a JSON object (each endpoint's fields are in /docs)",
            )
            return
        await _serve_watching_hang_up(self.app, scope, body, receive, send)


async def _serve_watching_hang_up(
    app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send
) -> None:
    """Hands ``body`` to ``app`` and, while it answers, watches the connection: once the body is
    read the server's next message is the client hanging up (or the answer having been sent).
    That sets ``scope["state"]["hung_up"]``, which the request's Deadline reads between graph
    calls, and is what ``app`` hears if it listens (a stream) after the body."""
    hung_up = threading.Event()
    scope.setdefault("state", {})["hung_up"] = hung_up
    gone = anyio.Event()
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # nothing else comes after the body; a stray empty chunk is not a hang-up
        hung_up.set()
        gone.set()

    failure: BaseException | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        try:
            await app(scope, replay, send)
        except BaseException as exc:  # raised below as it came, not wrapped in a group
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _reject(send: Send, status: int, type_: str, message: str, unread: bool = False) -> None:
    """The error, answered before any route; ``unread``: the body was not read to its end, so
    the connection closes (what is left of the body would read as the next request)."""
    # Spaced as JSONResponse writes every other error.
    payload = json.dumps(error_body(type_, message), separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if unread:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def open_engines(
    models: dict[str, LoadedModel], settings: Settings, metrics: Metrics
) -> dict[str, Engine]:
    """An engine for each loaded model, asked once for a next token before it serves: a model
    whose card lacks a field, or whose graphs load but fail to run, is marked failed with its
    reason (in /ready, /models and the log) and the others serve on."""
    engines = {}
    for name, model in models.items():
        if not model.ready:
            continue
        try:
            engine = Engine(
                model,
                settings.max_batch_rows if model.precision == "float32" else 1,
                metrics.batch_rows.labels(name).observe,
                settings.batch_wait_ms / 1000,
                slot_rows=settings.max_batch_rows,  # a slot row's int8 logits are its own
                on_draft=metrics.drafts(name) if model.draft_tokens else None,
            )
            probe(engine)
        except Exception as error:  # this model alone is out; the reason is kept and shown
            model.fail(f"{type(error).__name__}: {error}", "did not answer its probe")
            continue
        engines[name] = engine
    return engines


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings`` (default: from the environment)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(limit_malloc_arenas(settings.malloc_arenas))  # before any session's threads
        models = load_models(settings.load_options())
        app.state.models = models
        app.state.engines = open_engines(models, settings, app.state.metrics)
        for name, m in models.items():
            app.state.metrics.models.labels(name, m.provider or "none", m.precision).set(
                1 if m.ready else 0
            )
        try:
            if not settings.ab_store:
                raise ValueError("MACHADO_AB_STORE is empty: the experiment is not recorded")
            app.state.ab_store = await anyio.to_thread.run_sync(Store, settings.ab_store)
        except Exception as error:  # the service serves; the experiment records nothing
            app.state.ab_store_error = f"{type(error).__name__}: {error}"
            log.error(f"A/B store {settings.ab_store} did not open: {app.state.ab_store_error}")
        try:
            app.state.ab_weights = parse_weights(settings.ab_weights, sorted(app.state.engines))
        except ValueError as error:
            app.state.ab_weights, app.state.ab_error = {}, str(error)
            log.error(f"A/B experiment off: {error}")
        ready = sorted(app.state.engines)
        failed = sorted(set(models) - set(ready))
        log.info(
            f"serving {len(ready)} model(s) from {settings.models_dir}: {ready}"
            + (f"; failed: {failed}" if failed else "")
        )
        yield
        # Stopped: the sessions, their weights and threads, go now rather than with the app
        # object, which outlives its server where FastAPI's caches of endpoint functions hold it
        # (a process that makes several apps, as the tests do, would keep every app's models).
        app.state.engines, app.state.models = {}, {}
        if app.state.ab_store is not None:  # what is queued is written before the process ends
            await anyio.to_thread.run_sync(app.state.ab_store.close)
        log.info("stopped: models released")

    # The docs pages (/docs, /redoc) with their scripts and styles served from here: FastAPI's
    # own load them from a CDN, which a machine without internet cannot reach. DocsPolicy (below)
    # keeps them from loading anything else from elsewhere.
    app = FastAPIOffline(
        docs_url=DOCS_URL,
        redoc_url=REDOC_URL,
        title="machado-lm",
        version="0.1.0",
        summary="Language models of Machado de Assis, with attention and without, side by side.",
        lifespan=lifespan,
        # A redirect to the path with or without its slash would be built from the request's
        # Host header; the paths are exact instead.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.models, app.state.engines = {}, {}
    app.state.metrics = Metrics()
    app.state.ab_store, app.state.ab_store_error = None, None
    app.state.drain = Drain()
    app.state.admission = Admission(
        settings.max_concurrency, settings.max_queue, settings.queue_timeout_s, app.state.drain
    )
    app.state.metrics.in_flight.set_function(lambda: app.state.admission.running)
    app.state.metrics.queued.set_function(lambda: app.state.admission.waiting)
    app.state.ab_weights, app.state.ab_error = {}, None
    app.state.started = time.time()
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(compare.router)
    app.include_router(openai.router)
    app.include_router(tokens.router)
    app.include_router(experiment.router)
    app.mount("/static", StaticFiles(directory=meta.STATIC), name="static")
    app.include_router(meta.router)
    app.openapi = configured_openapi(app.openapi, settings)
    post_paths = frozenset(
        path for path, operations in app.openapi()["paths"].items() if "post" in operations
    )
    app.add_middleware(RequestLimits, settings=settings)
    app.add_middleware(
        BodyGuard,
        max_bytes=settings.max_body_bytes,
        paths=post_paths,
        timeout=settings.body_timeout_s,
    )
    docs_paths = frozenset((DOCS_URL, REDOC_URL, app.swagger_ui_oauth2_redirect_url))
    app.add_middleware(DocsPolicy, paths=docs_paths)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-client-id", "x-request-id"],
            expose_headers=["x-request-id", "x-model", "retry-after"],
        )
    app.add_middleware(
        HeadGuard, max_bytes=settings.max_head_bytes, max_headers=settings.max_headers
    )
    app.add_middleware(SecurityHeaders)
    # Outermost: every response, errors and rejections included, gets its id and log line.
    app.add_middleware(RequestContext, metrics=app.state.metrics, log_prompts=settings.log_prompts)
    return app
