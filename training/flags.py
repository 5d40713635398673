"""argparse types that say what is wrong with a value, and flags generated from a config
dataclass: a field declared with ``option`` is a flag, its help, type and default written once."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, field, fields
from typing import Any


def whole(minimum: int):
    """An argparse type: a whole number, at least ``minimum``."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return whole


positive = whole(1)  # steps, sequences, threads, windows, repeats: none of them can be 0
non_negative = whole(0)  # warm-up steps


def vocab_size(text: str) -> int:
    """A byte-level BPE vocabulary: the 256 bytes, the end-of-text token, and merges."""
    value = positive(text)
    if value < 257:
        raise argparse.ArgumentTypeError(
            f"must be at least 257 (the 256 bytes and the end-of-text token), got {value}"
        )
    return value


def within(low: float, high: float | None = None, *, above: bool = False, below: bool = False):
    """An argparse type: a number from ``low`` (``above``: more than it) to ``high`` (``below``:
    less than it), whose error says which."""
    bounds = f"{'more than' if above else 'at least'} {low:g}"
    if high is not None:
        bounds += f" and {'below' if below else 'at most'} {high:g}"

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if above else value < low
        too_high = high is not None and (value >= high if below else value > high)
        if too_low or too_high or value != value:  # NaN compares false with everything
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return number


def option(default: Any, help: str, type: Any = None, **argparse_options: Any) -> Any:
    """A config field that is also a command-line flag (``--field-name``)."""
    metadata = {"help": help, "type": type, **argparse_options}
    return field(default=default, metadata=metadata)


def flag_fields(cls: type) -> list[Field]:
    return [f for f in fields(cls) if "help" in f.metadata]


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag for every ``option`` field of the dataclass ``cls``, with its default."""
    for f in flag_fields(cls):
        options = {k: v for k, v in f.metadata.items() if k != "help" and v is not None}
        default = None if f.default is MISSING else f.default
        shown = "" if default is None or isinstance(default, bool) else f" (default {default})"
        name = "--" + f.name.replace("_", "-")
        parser.add_argument(
            name, dest=f.name, default=default, help=f.metadata["help"] + shown, **options
        )


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of ``cls``'s flags, by field name."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls)}


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    from training.device import PRECISIONS

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="bf16 autocast or full fp32; auto (the default): bf16 on CUDA and on CPUs with "
        "bf16 instructions (AVX512-BF16, AMX), fp32 elsewhere",
    )
