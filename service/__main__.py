"""``python -m service``: serve the models directory over HTTP with uvicorn.

Every flag defaults to its MACHADO_<NAME> environment variable, then to the built-in default.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings


def build_parser(defaults: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        literal = typing.get_origin(field.annotation) is typing.Literal
        choices = typing.get_args(field.annotation) if literal else None
        kind = {int: int, float: float, Path: Path}.get(field.annotation, str)
        parser.add_argument(
            flag,
            dest=name,
            default=default,
            type=kind,
            choices=choices,
            # argparse formats help with %, so a literal one in a description must be doubled.
            help=f"{field.description or name} (env MACHADO_{name.upper()}; now {default})".replace(
                "%", "%%"
            ),
        )
    return parser


def describe(problem: dict) -> str:
    """One settings error: the variable and flag, what was wrong (in words, as a 422 says it)
    and what the setting is; never the value given, which may be a secret (the API key)."""
    from service.errors import problem as in_words

    name = str(problem["loc"][0]) if problem["loc"] else ""
    field = Settings.model_fields.get(name)
    if field is None:
        return in_words(problem)
    where = f"MACHADO_{name.upper()} (--{name.replace('_', '-')})"
    return f"{where}: {in_words(problem)}; {field.description}"


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from service.app import create_app
    from service.logs import logging_config

    try:
        defaults = Settings()
        args = build_parser(defaults).parse_args(argv)
        settings = Settings(**vars(args))
    except ValidationError as error:
        for problem in error.errors():
            print(f"error: invalid setting {describe(problem)}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=logging_config(settings.log_format, settings.log_level),
        timeout_graceful_shutdown=settings.drain_timeout_s,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
