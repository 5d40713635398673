"""The flags of ``python -m training``: one subcommand per step of the pipeline, each with help."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable
from pathlib import Path

from training import corpus, data
from training.flags import add_flags, positive, vocab_size


def parse_value(text: str):
    """A --set value as a Python literal where it is one (numbers, booleans), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _folder_holding(marker: str, meaning: str) -> Callable[[str], Path]:
    """An argparse type: a folder that holds ``marker``, or a usage error saying what such a
    folder is (``meaning``)."""

    def folder(text: str) -> Path:
        path = Path(text)
        if not (path / marker).is_file():
            what = "does not exist" if not path.exists() else f"has no {marker}"
            raise argparse.ArgumentTypeError(f"{text} {what}: {meaning}")
        return path

    return folder


# A run saves config.json beside its weights; export writes card.json beside its graphs.
_checkpoint = _folder_holding(
    "config.json",
    "a checkpoint is a run's best/ or last/ folder (config.json and model.safetensors)",
)
_model_folder = _folder_holding(
    "card.json", "a model folder is what `export` writes (card.json and graphs)"
)


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        default=None,
        help=f"corpus folder (env {corpus.CORPUS_ENV}; default {corpus.DEFAULT_CORPUS})",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"prepared data folder, made from the corpus where missing "
        f"(env {data.DATA_ENV}; default {data.DEFAULT_DATA})",
    )


def _add_study_args(parser: argparse.ArgumentParser, split_help: str) -> None:
    """What the studies of the shipped models over a split (context, heads) share: the models,
    the split, ONNX Runtime's threads, the JSON result and the prepared data."""
    parser.add_argument("--models", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--split", choices=corpus.SPLITS, default="test", help=split_help)
    parser.add_argument("--threads", type=positive, default=2, help="ONNX Runtime threads (2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    _add_data_args(parser)


def build_parser() -> argparse.ArgumentParser:
    from training.train import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="clean the corpus, train the tokenizer, tokenize the splits")
    _add_data_args(p)
    p.add_argument("--vocab-size", type=vocab_size, default=8192, help="BPE vocabulary size (8192)")

    p = sub.add_parser("train", help="train a model (CPU or CUDA; torchrun for several processes)")
    p.add_argument(
        "--model", choices=("attention", "bengio"), default="attention", help="model kind"
    )
    p.add_argument(
        "--preset", default="tiny", help="attention: tiny, seed, small, base; bengio: tiny, base"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a model config field, e.g. --set dropout=0.1 (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (runs/MODEL-PRESET)")
    _add_data_args(p)
    add_flags(p, TrainConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "sweep",
        help="tune on validation: one factor at a time around a preset, then the best together",
        description="Trains the base trial, one trial per --vary value, then the best value of "
        "every factor together, all with the same train arguments (given after --); chooses the "
        "lowest validation loss and evaluates it on validation and test.",
    )
    p.add_argument("--model", choices=("attention", "bengio"), default="bengio")
    p.add_argument("--preset", default="base", help="the base configuration (base)")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="a config field and the values to try besides the preset's (repeatable)",
    )
    p.add_argument("--out", type=Path, required=True, help="sweep folder")
    p.add_argument("--parallel", type=positive, default=1, help="trials trained at once (1)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluating the chosen trial")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the sweep in OUT: finished trials are kept, unfinished ones resume "
        "from their last checkpoints (same --vary and train arguments required)",
    )
    p.add_argument("--data", type=Path, default=None, help="prepared data folder")
    p.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="-- then arguments for every `train`"
    )

    p = sub.add_parser("evaluate", help="perplexity and bits per character of a checkpoint")
    p.add_argument(
        "checkpoint", type=_checkpoint, help="checkpoint folder (config.json + safetensors)"
    )
    p.add_argument("--split", choices=corpus.SPLITS, default="test", help="split (test)")
    p.add_argument("--batch-size", type=positive, default=32, help="windows per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument(
        "--storage",
        choices=("float32", "float16"),
        default="float32",
        help="round the weights to this precision first (what fp16 shipping costs)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    _add_data_args(p)

    p = sub.add_parser("export", help="checkpoint -> ONNX model folder with its card")
    p.add_argument(
        "checkpoint", type=_checkpoint, help="checkpoint folder (config.json + safetensors)"
    )
    p.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/attention")
    p.add_argument("--name", default=None, help="model name (default: the folder's name)")
    p.add_argument(
        "--storage",
        choices=("float16", "float32"),
        default="float16",
        help="precision the weights are stored in (float16)",
    )
    p.add_argument(
        "--eval",
        dest="evaluations",
        type=Path,
        action="append",
        default=[],
        help="an `evaluate --json` result to record in the card (repeatable)",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer.json the model was trained with (default: DATA/tokenizer.json)",
    )
    p.add_argument("--data", type=Path, default=None, help="prepared data folder")
    p.add_argument("--note", default=None, help="a sentence on how it was trained, for the card")

    p = sub.add_parser(
        "checksums",
        help="record the size and sha256 of a model folder's graphs and weights in its card",
        description="Record in each folder's card.json the size and sha256 of its graphs and "
        "weights, which the service checks before loading them. `export` records them itself: "
        "this is for folders exported before cards had them, and only for files known to be "
        "good, since whatever is there becomes what the service accepts.",
    )
    p.add_argument("folders", type=_model_folder, nargs="+", help="model folders (with card.json)")

    p = sub.add_parser("report", help="regenerate models/README.md from the model cards")
    p.add_argument("--models", type=Path, default=Path("models"), help="models folder")
    p.add_argument("--threads", type=positive, default=2, help="ONNX Runtime threads for latency")
    p.add_argument(
        "--cuda-check",
        type=Path,
        default=Path("benchmarks/ort-cuda.json"),
        help="python -m bench cuda-check result to include, if the file exists "
        "(benchmarks/ort-cuda.json)",
    )
    p.add_argument(
        "--quantize-bench",
        type=Path,
        default=Path("benchmarks/quantize-cpu.json"),
        help="python -m bench quantize result to include, if the file exists "
        "(benchmarks/quantize-cpu.json)",
    )

    p.add_argument(
        "--starts-bench",
        type=Path,
        default=Path("benchmarks/starts-test.json"),
        help="`python -m training starts` result to include, if the file exists "
        "(benchmarks/starts-test.json)",
    )
    p.add_argument(
        "--context-bench",
        type=Path,
        default=Path("benchmarks/context-test.json"),
        help="`python -m training context` result to include, if the file exists "
        "(benchmarks/context-test.json)",
    )
    p.add_argument(
        "--heads-bench",
        type=Path,
        default=Path("benchmarks/heads-test.json"),
        help="`python -m training heads` result to include, if the file exists "
        "(benchmarks/heads-test.json)",
    )

    p = sub.add_parser(
        "context", help="loss against context length: how much of its context each model uses"
    )
    _add_study_args(p, "split to score (test)")
    p.add_argument("--names", nargs="+", default=None, help="only these model folders")
    p.add_argument(
        "--coverage",
        type=positive,
        default=4,
        help="windows per window length of stream: each token is scored this many times (4)",
    )

    p = sub.add_parser(
        "starts",
        help="bits per character at a text's first tokens, read alone after end-of-text (as the "
        "service reads a prompt) and after the text before it",
    )
    _add_study_args(p, "split whose paragraphs are the texts (test)")
    p.add_argument("--names", nargs="+", default=None, help="only these model folders")

    p = sub.add_parser(
        "heads", help="what each attention head looks at: distance, entropy, previous token"
    )
    _add_study_args(p, "split to read (test)")
    p.add_argument(
        "--windows",
        type=positive,
        default=64,
        help="windows of each model's context, laid evenly (64)",
    )

    return parser
