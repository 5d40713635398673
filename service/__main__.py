"""``python -m service``: serve the models directory over HTTP with uvicorn.

Every flag defaults to its MACHADO_<NAME> environment variable, then to the built-in default.
``--check`` serves nothing: it loads the models directory as serving would, runs each model once
and exits 1 if any model failed (before a rollout, or in an image build).
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings, settings_table


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


def check(settings: Settings) -> int:
    """Every model of the models directory loaded as serving would load it (checksums,
    provider, precision), then asked to work (runtime.check): one line each on stdout, and 1 if
    any model failed, or there is none; 0 otherwise."""
    from runtime.check import check_models

    return check_models(settings.load_options())


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    import logging.config

    import uvicorn

    from service.app import create_app
    from service.connections import DrainingServer, GuardedProtocol
    from service.logs import logging_config

    try:
        defaults = Settings()
        parser = build_parser(defaults)
        parser.add_argument(
            "--check",
            action="store_true",
            help="serve nothing: load every model as serving would, run each once, print one "
            "line per model, and exit 1 if any failed",
        )
        parser.add_argument(
            "--settings-table",
            action="store_true",
            help="serve nothing: print every setting as a Markdown table (docs/settings.md)",
        )
        args = vars(parser.parse_args(argv))
        checking = args.pop("check")
        if args.pop("settings_table"):
            print(settings_table(), end="")
            return 0
        settings = Settings(**args)
    except ValidationError as error:
        for problem in error.errors():
            print(f"error: invalid setting {describe(problem)}", file=sys.stderr)
        return 2
    if checking:
        logging.config.dictConfig(logging_config(settings.log_format, settings.log_level))
        return check(settings)
    app = create_app(settings)
    metrics = app.state.metrics
    config = uvicorn.Config(
        app,
        http=functools.partial(
            GuardedProtocol,
            head_timeout=settings.head_timeout_s,
            send_timeout=settings.send_timeout_s,
            on_close=lambda reason: metrics.connections_closed.labels(reason).inc(),
        ),
        host=settings.host,
        port=settings.port,
        log_config=logging_config(settings.log_format, settings.log_level),
        timeout_graceful_shutdown=settings.drain_timeout_s,
        access_log=False,
        # h11 refuses a request head still incomplete past this size (431); HeadGuard refuses
        # one that arrived whole.
        h11_max_incomplete_event_size=settings.max_head_bytes,
    )
    server = DrainingServer(config, lambda: app.state.drain.begin(settings.drain_timeout_s))
    # uvicorn raises the signal again once it has drained, and SIGTERM's default action would
    # end the process with status 143 after a clean shutdown: a drained stop exits 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
