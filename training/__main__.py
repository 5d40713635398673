"""Command line: ``python -m training COMMAND``; ``--help`` lists the commands (training/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training import corpus, data
from training.cli import build_parser, parse_value
from training.flags import flag_values


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
        return 0
    except corpus.CorpusNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects FIELD=VALUE, got {pair!r}")
        out[key] = parse_value(value)
    return out


def _factors(pairs: list[str]) -> dict[str, list]:
    factors = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--vary expects FIELD=V1,V2,..., got {pair!r}")
        factors[key] = [parse_value(v) for v in values.split(",")]
    return factors


def _check_config(kind: str, name: str, overrides: dict | None = None) -> None:
    """The model config a command would build, checked before it prepares data or trains: one
    that cannot train ends the command with its reason, not with a traceback later."""
    from training.checkpoint import preset

    try:
        preset(kind, name, **(overrides or {}))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def _prepare(args: argparse.Namespace) -> None:
    data.prepare(
        corpus.resolve_corpus_dir(args.corpus),
        data.resolve_data_dir(args.data),
        args.vocab_size,
    )


def _train(args: argparse.Namespace) -> None:
    from training.train import TrainConfig, train

    overrides = _overrides(args.overrides)
    _check_config(args.model, args.preset, overrides)
    cfg = TrainConfig(
        kind=args.model,
        preset=args.preset,
        overrides=overrides,
        out=args.out or Path("runs") / f"{args.model}-{args.preset}",
        data=data.resolve_data_dir(args.data),
        corpus=args.corpus,
        progress=not args.no_progress,
        **flag_values(TrainConfig, args),
    )
    train(cfg)


def _sweep(args: argparse.Namespace) -> None:
    from training.sweep import sweep

    factors = _factors(args.vary)
    for field, values in factors.items():  # every trial's, before the first one trains
        for value in values:
            _check_config(args.model, args.preset, {field: value})
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    data_dir = data.resolve_data_dir(args.data)
    data.ensure_prepared(data_dir, None)
    if "--time-budget" in train_args:
        raise SystemExit(
            "sweep: give a step budget (--max-steps), not --time-budget, so "
            "every trial sees the same tokens however many share the device"
        )
    try:
        sweep(
            args.model,
            args.preset,
            factors,
            args.out,
            [*train_args, "--data", str(data_dir)],
            args.parallel,
            data_dir,
            evaluate=not args.no_eval,
            resume=args.resume,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_checkpoint, write_json

    data_dir = data.resolve_data_dir(args.data)
    data.ensure_prepared(data_dir, args.corpus)
    result = evaluate_checkpoint(
        args.checkpoint, data_dir, args.split, args.batch_size, args.device, args.storage
    )
    print(json.dumps(result, indent=2))
    write_json(result, args.json)


def _export(args: argparse.Namespace) -> None:
    import shutil

    from training.export import export_checkpoint

    tokenizer = args.tokenizer or data.resolve_data_dir(args.data) / "tokenizer.json"
    card = export_checkpoint(
        args.checkpoint,
        args.out,
        tokenizer,
        args.name,
        args.storage,
        args.evaluations,
        {"note": args.note} if args.note else None,
    )
    history = args.checkpoint.parent / "metrics.jsonl"
    if history.is_file():
        shutil.copyfile(history, args.out / "metrics.jsonl")
    print(json.dumps({k: card[k] for k in ("name", "kind", "parameters", "context")}))


def _checksums(args: argparse.Namespace) -> None:
    from training.export import record_checksums

    for folder in args.folders:
        for name, file in record_checksums(folder).items():
            print(f"{folder / name}: {file['bytes']:,} bytes, sha256 {file['sha256']}")


def _report(args: argparse.Namespace) -> None:
    from training.report import write_report

    try:
        written = write_report(
            args.models,
            args.threads,
            args.cuda_check,
            args.quantize_bench,
            args.context_bench,
            args.heads_bench,
            args.starts_bench,
        )
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {written}")


def _heads(args: argparse.Namespace) -> None:
    from training.evaluate import write_json
    from training.heads import format_table, measure

    data_dir = data.resolve_data_dir(args.data)
    data.ensure_prepared(data_dir, args.corpus)
    try:
        result = measure(args.models, data_dir, args.split, args.windows, args.threads)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    for name in result["models"]:
        print(f"{name} (cells: tokens back · entropy · weight on the previous token)")
        print(format_table(result, name))
    write_json(result, args.json)


def _starts(args: argparse.Namespace) -> None:
    from training.evaluate import write_json
    from training.starts import format_table, measure

    try:
        result = measure(
            args.models,
            corpus.resolve_corpus_dir(args.corpus),
            args.split,
            args.threads,
            args.names,
        )
    except (FileNotFoundError, corpus.CorpusNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_table(result))
    write_json(result, args.json)


def _context(args: argparse.Namespace) -> None:
    from training.context import format_table, measure
    from training.evaluate import write_json

    data_dir = data.resolve_data_dir(args.data)
    data.ensure_prepared(data_dir, args.corpus)
    try:
        result = measure(
            args.models,
            data_dir,
            args.split,
            args.coverage,
            args.threads,
            args.names,
            progress=True,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_table(result))
    write_json(result, args.json)


COMMANDS = {
    "prepare": _prepare,
    "train": _train,
    "sweep": _sweep,
    "evaluate": _evaluate,
    "export": _export,
    "checksums": _checksums,
    "report": _report,
    "heads": _heads,
    "starts": _starts,
    "context": _context,
}


if __name__ == "__main__":
    sys.exit(main())
