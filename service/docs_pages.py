"""The API docs pages (Swagger UI, ReDoc), whose scripts the service serves itself, held to a
Content-Security-Policy that lets them load from and call this server only.

fastapi-offline serves the pages' scripts from here, but ReDoc's footer still shows Redocly's
logo from its CDN: each reader's browser would ask a third party for it. The policy refuses it
(ReDoc then leaves the picture out), as it would anything either script fetched from elsewhere in
a later version.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_URL, REDOC_URL = "/docs", "/redoc"

# A <script> with no attributes: the pages' inline set-up code, allowed by its hash below.
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def docs_policy(html: str) -> str:
    """The policy of one docs page: scripts from this server and the page's own inline ones
    (by hash), styles from here or inline (both UIs style elements from script), pictures and
    fonts from here or data: URLs, calls ("Try it out", the schema) and ReDoc's search worker
    (a blob:) to this server only."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self'{' ' + hashes if hashes else ''}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
        "connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class DocsPolicy:
    """Pure ASGI middleware: each response of ``paths`` (the docs pages, a few kB of HTML) gets
    its page's policy. Every other request passes through untouched."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        start: Message = {}
        body = bytearray()

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)  # sent with the whole body, once the policy is known
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            headers = MutableHeaders(scope=start)
            if headers.get("content-type", "").startswith("text/html"):
                headers["Content-Security-Policy"] = docs_policy(body.decode("utf-8", "replace"))
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
            await send(start)
            await send({"type": "http.response.body", "body": bytes(body)})

        await self.app(scope, receive, send_with_policy)
