"""The models the service serves: every folder of the models directory with a card.json.

Each graph gets one ONNX Runtime session at start-up. A model that fails to load is kept in the
registry with its error, so /ready, /models and the log say what happened instead of the
process dying and restarting in a loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
from tokenizers import Tokenizer

from service.quantize import int8_weight_bits, quantize_int8
from service.settings import Settings

log = logging.getLogger("service.registry")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# Below this context the key/value cache does not pay, so its graph is not loaded (each session
# holds its own float32 weights): a window that short costs about one graph call either way
# (attention-seed at context 8, as shipped until 2026-12-04: 0.34 ms a token cached, 0.32 ms
# uncached, on 2 CPU threads; attention, context 256: 1.86 against 10.3 ms).
MIN_CACHE_CONTEXT = 64


@dataclass
class LoadedModel:
    """One model: its card, tokenizer and sessions, or the reason it could not load."""

    name: str
    folder: Path
    card: dict[str, Any] = field(default_factory=dict)
    tokenizer: Tokenizer | None = None
    session: ort.InferenceSession | None = None
    attention_session: ort.InferenceSession | None = None
    decoder_session: ort.InferenceSession | None = None  # generation with a key/value cache
    provider: str | None = None
    provider_reason: str = ""
    precision: str = "float32"  # of the matrix products: float32, or int8 (MACHADO_QUANTIZE)
    files_checked: bool = False  # its files matched the checksums of its card before loading
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.error is None and self.session is not None

    def fail(self, error: str, stage: str = "failed to load") -> None:
        """Out of service with ``error`` as its reason (its sessions released), logged once."""
        self.error = error
        self.session = self.attention_session = self.decoder_session = None
        log.error(f"model {self.name} {stage}: {error}", extra={"model": self.name, "error": error})

    @property
    def has_attention(self) -> bool:
        return bool(self.card.get("has_attention")) and self.attention_session is not None


def choose_providers(preference: str) -> tuple[list[str], str]:
    """The providers to ask for, and why, from the preference and what this wheel offers."""
    available = ort.get_available_providers()
    if preference == "cpu":
        return [CPU], "CPU asked for (MACHADO_PROVIDER=cpu)"
    if CUDA not in available:
        why = "this onnxruntime build has no CUDA provider"
        if preference == "cuda":
            return [CPU], f"CUDA asked for but {why}; falling back to CPU"
        return [CPU], why
    return [CUDA, CPU], "CUDA provider available"


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The memory pattern planner records the allocations of each distinct set of input shapes
    # and pre-allocates them when that set comes again; the service sends a new shape at nearly
    # every call (batch rows x window, or x cache length: up to 16 x 256 x 4 for the attention
    # decoder). Over 300 random shapes run twice it left resident memory 53 MiB (windows) and
    # 77 MiB (decoder steps) higher than with it off, at the same speed. Turning the CPU arena
    # off as well holds less in a process of its own, but costs 14-15 % of the time, and in the
    # service under load it held no less (scripts/bench_memory.py, benchmarks/memory-cpu.json;
    # BENCHMARKS.md, memory).
    options.enable_mem_pattern = False
    # Idle threads spin (burning a core) before they sleep: briefly, so that they catch the next
    # operator of the same call but leave the cores to the next session, request or the event
    # loop (BENCHMARKS.md, threads).
    spin_us = settings.thread_spin_us
    spin = "0" if spin_us == 0 else "1"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    if spin_us > 0:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    options.log_severity_level = 3  # errors only: the wheel's CUDA probing is loud otherwise
    return options


def _open(
    path: Path, settings: Settings, providers: list[str], int8: bool = False
) -> ort.InferenceSession:
    source = quantize_int8(path) if int8 else str(path)
    # CUDA's provider rounds matrix products to TF32 unless told otherwise (use_tf32 is on by
    # default): the logits would then drift from the CPU's beyond 1e-3 (MACHADO_CUDA_TF32).
    tf32 = {"use_tf32": "1" if settings.cuda_tf32 else "0"}
    chosen = [(name, tf32) if name == CUDA else name for name in providers]
    return ort.InferenceSession(source, session_options(settings), providers=chosen)


def _open_int8(path: Path, settings: Settings, name: str) -> ort.InferenceSession | None:
    """The graph with int8 weights on the CPU, or None (and a warning) where that fails."""
    try:
        return _open(path, settings, [CPU], int8=True)
    except Exception as exc:  # the caller serves float32 instead
        log.warning(
            f"model {name}: int8 quantization of {path.name} failed, serving float32: "
            f"{type(exc).__name__}: {exc}",
            extra={"model": name},
        )
        return None


# Without its key/value cache graph a model still answers the same, a window a token: a problem
# with that file alone leaves the model serving (a warning), a problem with any other refuses it.
CACHE_GRAPH = "decoder.onnx"


def file_problems(folder: Path, card: dict[str, Any]) -> dict[str, str]:
    """What is wrong with each graph or weights file of ``folder`` against the size and sha256
    its card records (``files``): missing, damaged, truncated or half-copied (or a Git LFS
    pointer in its place), by file name; none for files as exported. Found before ONNX Runtime
    reads them, which would load a damaged file and answer nonsense, or fail on a truncated one
    with a message about its internals. A card that leaves out a file read, or lists one outside
    the folder, is refused (ValueError). A card without checksums (an export older than them)
    has its files loaded unchecked, and the log says so."""
    files = card.get("files")
    name = folder.name
    if files is None:
        log.warning(
            f"model {name}: its card records no checksums (exported before cards had them), so "
            f"its files load unchecked; `python -m training checksums {folder}` records them",
            extra={"model": name},
        )
        return {}
    read = {"model.onnx", *card.get("graphs", {})} | {
        p.name for p in folder.glob("*.bin") if p.is_file()
    }
    left_out = sorted(read - set(files))
    if left_out:
        raise ValueError(f"the card records no checksum for {', '.join(left_out)}")
    outside = [f for f in sorted(files) if (folder / f).parent != folder]
    if outside:
        raise ValueError(f"the card lists {outside[0]!r}, which is not a file of {name}/")
    problems = {}
    for file_name, expected in sorted(files.items()):
        path = folder / file_name
        if not path.is_file():
            problems[file_name] = f"{file_name} is missing from {name}/"
            continue
        size = path.stat().st_size
        if size != expected["bytes"]:
            problems[file_name] = (
                f"{file_name} has {size:,} bytes, the card records {expected['bytes']:,}: a "
                "truncated or unfinished copy (or a Git LFS pointer instead of the file)"
            )
            continue
        with path.open("rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        if digest != expected["sha256"]:
            problems[file_name] = (
                f"{file_name} has sha256 {digest[:12]}, the card records "
                f"{expected['sha256'][:12]}: the file is damaged or comes from another export"
            )
    return problems


@dataclass
class ProviderChoice:
    """Providers for the next session, and why; narrowed to CPU once CUDA proves unusable."""

    providers: list[str]
    reason: str


# What the service reads of a card, each with the type it must have: a card without one of them
# (or with another type) refuses its model, by name, before anything else of it is read.
CARD_FIELDS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "kind": ("a string", str),
    "context": ("a positive integer", int),
    "config": ("an object with vocab_size", dict),
    "tokenizer": ("an object with file and sha256", dict),
}


def read_card(folder: Path) -> dict[str, Any]:
    """The card of ``folder``, refused (ValueError) where a field the service reads is missing
    or of the wrong type."""
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    if not isinstance(card, dict):
        raise ValueError("card.json is not a JSON object")
    for key, (what, kind) in CARD_FIELDS.items():
        value = card.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"card.json: {key!r} must be {what}, found {value!r:.60}")
    if card["context"] < 1:
        raise ValueError(f"card.json: 'context' must be positive, found {card['context']}")
    vocab = card["config"].get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 2:
        raise ValueError(f"card.json: 'config.vocab_size' must be an integer, found {vocab!r:.60}")
    tok = card["tokenizer"]
    if not isinstance(tok.get("file"), str) or not isinstance(tok.get("sha256"), str):
        raise ValueError("card.json: 'tokenizer' must name a file and its sha256")
    return card


def inside(path: Path, root: Path, what: str) -> Path:
    """``path`` resolved (symbolic links followed), refused (ValueError) if that lands outside
    ``root``: the service reads nothing from outside its models directory."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{what} resolves outside the models directory")
    return resolved


def check_external_data(graph: Path, root: Path) -> None:
    """Every external-data file that ``graph`` names lies inside ``root`` (ONNX Runtime has a
    check of its own; the service does not depend on it)."""
    import onnx  # the graph's structure only: its weights stay on disk

    def tensors(g: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from g.initializer
        for node in g.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                    yield from tensors(sub)

    proto = onnx.load(str(graph), load_external_data=False)
    for tensor in tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        inside(graph.parent / location, root, f"{graph.name}'s external data {location!r:.80}")


def load_model(
    folder: Path, settings: Settings, tokenizers: dict[str, Tokenizer], choice: ProviderChoice
) -> LoadedModel:
    model = LoadedModel(name=folder.name, folder=folder)
    try:
        root = settings.models_dir.resolve()
        inside(folder, root, f"the folder {folder.name}/")
        inside(folder / "card.json", root, f"{folder.name}/card.json")
        model.card = read_card(folder)
        for file_name in model.card.get("files") or {}:
            if (folder / file_name).exists():
                inside(folder / file_name, root, f"{folder.name}/{file_name}")
        tok = model.card["tokenizer"]
        tok_path = inside(folder.parent / tok["file"], root, f"tokenizer {tok['file']!r:.80}")
        digest = hashlib.sha256(tok_path.read_bytes()).hexdigest()
        if digest != tok["sha256"]:
            raise ValueError(
                f"{tok_path.name} has sha256 {digest[:12]}, the card names {tok['sha256'][:12]}"
            )
        if digest not in tokenizers:
            tokenizers[digest] = Tokenizer.from_file(str(tok_path))
        model.tokenizer = tokenizers[digest]
        problems = file_problems(folder, model.card)
        refused = [problem for file, problem in problems.items() if file != CACHE_GRAPH]
        if refused:
            raise ValueError("; ".join(refused))
        graphs = ["model.onnx", *model.card.get("graphs", {})]
        for graph in dict.fromkeys(graphs):
            if (folder / graph).exists():
                inside(folder / graph, root, f"{folder.name}/{graph}")
                if graph != CACHE_GRAPH:  # checked where it loads: its failure is its own
                    check_external_data(folder / graph, root)
        model.files_checked = "files" in model.card
        probing = choice.providers[0] == CUDA
        int8 = settings.quantize == "int8" and not probing  # on the CPU for sure
        if int8:
            model.session = _open_int8(folder / "model.onnx", settings, model.name)
            int8 = model.session is not None
        if model.session is None:
            if probing:  # ONNX Runtime reports a CUDA provider that cannot load at length
                ort.set_default_logger_severity(4)
            try:
                model.session = _open(folder / "model.onnx", settings, choice.providers)
            finally:
                ort.set_default_logger_severity(3)
        got = model.session.get_providers()[0]
        if probing and got != CUDA:
            choice.providers = [CPU]
            choice.reason = (
                "this onnxruntime has a CUDA provider, but it is not usable here "
                "(no GPU, or CUDA 13 / cuDNN 9 libraries missing): CPU"
            )
        model.provider, model.provider_reason = got, choice.reason
        if settings.quantize == "int8" and probing:
            if got == CPU:  # CUDA turned out unusable: quantize after all
                session = _open_int8(folder / "model.onnx", settings, model.name)
                if session is not None:
                    model.session, int8 = session, True
            else:
                log.info(
                    f"model {model.name}: MACHADO_QUANTIZE=int8 applies to the CPU provider "
                    f"only; float32 on {got}",
                    extra={"model": model.name},
                )
        if int8:
            model.precision = "int8"
        if model.card.get("has_attention"):
            # Always float32: the maps are read for study, one call each, and int8 weights
            # would change them.
            model.attention_session = _open(folder / "attention.onnx", settings, [got])
        if (
            settings.kv_cache
            and CACHE_GRAPH in model.card.get("graphs", {})
            and int(model.card["context"]) >= MIN_CACHE_CONTEXT
        ):
            try:
                if CACHE_GRAPH in problems:
                    raise ValueError(problems[CACHE_GRAPH])
                check_external_data(folder / CACHE_GRAPH, root)
                model.decoder_session = _open(folder / CACHE_GRAPH, settings, [got], int8)
            except Exception as exc:  # the model still generates, a window a token
                log.warning(
                    f"model {model.name}: its key/value cache graph did not load, generating "
                    f"without it: {type(exc).__name__}: {exc}",
                    extra={"model": model.name},
                )
    except Exception as exc:  # a broken folder is reported, never fatal
        model.fail(f"{type(exc).__name__}: {exc}")
        return model
    precision = model.precision
    if precision == "int8" and int8_weight_bits() == 7:
        precision += ", 7-bit weights: this x86 CPU has no VNNI, 8 bits could saturate"
    log.info(
        f"model {model.name} loaded on {model.provider} ({precision}): {model.provider_reason}",
        extra={"model": model.name, "provider": model.provider, "precision": model.precision},
    )
    return model


def load_models(settings: Settings) -> dict[str, LoadedModel]:
    """Every model folder of the models directory, loaded or with its error."""
    root = settings.models_dir
    if not root.is_dir():
        log.error(f"models directory {root} does not exist")
        return {}
    tokenizers: dict[str, Tokenizer] = {}
    folders = sorted(p.parent for p in root.glob("*/card.json"))
    if not folders:
        log.error(f"models directory {root} holds no model folder (no */card.json)")
    ort.set_default_logger_severity(3)
    choice = ProviderChoice(*choose_providers(settings.provider))
    return {folder.name: load_model(folder, settings, tokenizers, choice) for folder in folders}
