"""The configured request limits on request classes defined once, at import.

The request bodies are module-level pydantic classes, and so are the routers that take them,
but what a body may hold (the longest prompt, the most new tokens, the largest top-k...) is
the server's setting. A field names its setting with ``Limit("max_new_tokens")``; validation
reads the settings of the app that serves the request from a context variable that
``RequestLimits`` sets for every request, and ``configured_openapi`` writes the configured
values into the app's OpenAPI schema, so /docs states what this server accepts. A refusal is
pydantic's own error for the bound (``less_than_equal``, ``string_too_long``, ``too_long``),
as if the bound were written in the class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, PydanticKnownError, core_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import Settings

# The settings' defaults, for a body validated outside any app (a script, a unit test).
_DEFAULTS = Settings.model_construct()
_CURRENT: ContextVar[Settings] = ContextVar("request_limits")
# In the JSON schema until configured_openapi replaces it: [keyword, setting, at_most].
_MARK = "x-machado-limit"
_DEFAULT_MARK = "x-machado-default"
_KEYWORD = {
    "integer": "maximum",
    "string": "maxLength",
    "array": "maxItems",
    "object": "maxProperties",
}


def current() -> Settings:
    """The settings whose limits apply to the body being validated."""
    return _CURRENT.get(_DEFAULTS)


@contextmanager
def limits_of(settings: Settings) -> Iterator[None]:
    """Validate with ``settings``' limits inside the block."""
    token = _CURRENT.set(settings)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@dataclass(frozen=True)
class Limit:
    """The largest value, or the most characters, items or entries, that a field may hold:
    the setting's value, or ``at_most`` where that is smaller."""

    setting: str
    at_most: int | None = None

    def value(self, settings: Settings | None = None) -> int:
        configured = getattr(settings or current(), self.setting)
        return configured if self.at_most is None else min(configured, self.at_most)

    def check(self, value: Any) -> Any:
        bound = self.value()
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            if value > bound:
                raise PydanticKnownError("less_than_equal", {"le": bound})
        elif isinstance(value, str):
            if len(value) > bound:
                raise PydanticKnownError("string_too_long", {"max_length": bound})
        elif len(value) > bound:
            kind = "Dictionary" if isinstance(value, dict) else "List"
            raise PydanticCustomError(
                "too_long",
                "{field_type} should have at most {max_length} items after validation, "
                "not {actual_length}",
                {"field_type": kind, "max_length": bound, "actual_length": len(value)},
            )
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema[_MARK] = [_KEYWORD[json_schema["type"]], self.setting, self.at_most]
        return json_schema


@dataclass(frozen=True)
class Capped:
    """A default that the limit may lower: ``default``, or the setting's value where smaller.
    A pydantic ``default_factory``; ``schema`` is the field's ``json_schema_extra``."""

    default: int
    setting: str

    def __call__(self) -> int:
        return min(self.default, getattr(current(), self.setting))

    @property
    def schema(self) -> dict[str, Any]:
        return {_DEFAULT_MARK: [self.default, self.setting]}


def _resolve(node: Any, settings: Settings) -> None:
    if isinstance(node, list):
        for item in node:
            _resolve(item, settings)
        return
    if not isinstance(node, dict):
        return
    if _MARK in node:
        keyword, setting, at_most = node.pop(_MARK)
        node[keyword] = Limit(setting, at_most).value(settings)
    if _DEFAULT_MARK in node:
        default, setting = node.pop(_DEFAULT_MARK)
        node["default"] = min(default, getattr(settings, setting))
    for value in node.values():
        _resolve(value, settings)


def configured_openapi(
    openapi: Callable[[], dict[str, Any]], settings: Settings
) -> Callable[[], dict[str, Any]]:
    """``openapi`` (FastAPI's, which builds the schema once and keeps it) with every limit and
    capped default written as ``settings`` has it."""

    def schema() -> dict[str, Any]:
        built = openapi()
        _resolve(built, settings)  # in place, once: a resolved schema has no marks left
        return built

    return schema


class RequestLimits:
    """ASGI middleware: the bodies of this app's requests are validated with its settings."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with limits_of(self.settings):
            await self.app(scope, receive, send)
