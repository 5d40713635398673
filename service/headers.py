"""What every answer carries, and what a request's head may be: pure ASGI middleware.

- HeadGuard: a request with more headers, or more bytes of them, than the settings allow is a
  431 before anything reads it. A head that arrives whole in one read passes h11's own limit
  (which counts only heads still incomplete: service.connections), so both are needed.
- SecurityHeaders: every answer, whichever route or error handler wrote it, is
  ``nosniff`` and sends no referrer; an HTML answer without a policy of its own gets the
  playground's (its own script and style only, framed by no other site).
- JSONCORSMiddleware: Starlette's CORS, with its refusals in the one error shape.
"""

from __future__ import annotations

import json

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body

# The playground's policy: it runs only its own script and style, talks only to this server and
# is framed by no other site, so a text that somehow reached the page as markup could run nothing.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class HeadGuard:
    """431 for a request with more than ``max_headers`` headers or more than ``max_bytes`` of
    request line and headers, before any other middleware or route reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_headers: int) -> None:
        self.app, self.max_bytes, self.max_headers = app, max_bytes, max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        # Each header as it came on the wire: name, ": ", value, CRLF.
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(name) + len(value) + 4 for name, value in headers)
        if len(headers) > self.max_headers or size > self.max_bytes:
            scope.setdefault("state", {})["path"] = "unmatched"
            message = (
                f"the request has {len(headers)} headers, the limit is {self.max_headers} "
                "(MACHADO_MAX_HEADERS)"
                if len(headers) > self.max_headers
                else f"the request line and headers have {size} bytes, the limit is "
                f"{self.max_bytes} (MACHADO_MAX_HEAD_BYTES)"
            )
            response = JSONResponse(
                error_body("request_head_too_large", message), 431, {"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` on every answer;
    the page policy on an HTML answer that has none (a docs page brings its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers.setdefault("Referrer-Policy", "no-referrer")
                html = headers.get("content-type", "").startswith("text/html")
                if html and "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = PAGE_POLICY
            await send(message)

        await self.app(scope, receive, send_with_headers)


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflights answer plain text, answering them
    in the one error shape (with the same headers)."""

    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reasons = response.body.decode("utf-8", "replace")
        body = json.dumps(
            error_body(
                "cors_refused",
                f"the cross-origin request was refused ({reasons}); allowed origins are set by "
                "MACHADO_CORS_ORIGINS, methods GET and POST",
            ),
            separators=(",", ":"),
        ).encode()
        headers = {
            k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")
        }
        return Response(body, response.status_code, headers, media_type="application/json")
