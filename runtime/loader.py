"""Model folders opened with ONNX Runtime: every folder of a models directory with a card.json.

Each graph gets one ONNX Runtime session. A model that fails to load is kept with its error, so
that whoever serves it (the service's /ready and /models, a report) can say what happened
instead of the process dying. The options are explicit (LoadOptions): the service builds them
from its settings, a report or a benchmark from its flags.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from runtime.attention_graph import output_name, with_projections
from runtime.decode_graph import build_decode_graph
from runtime.folder import CACHE_GRAPH, check_external_data, file_problems, inside, read_card
from runtime.options import LoadOptions
from runtime.quantize import block_int8, int8_weight_bits, quantize_int8
from runtime.slots import SlotCache, slot_logits_gap

log = logging.getLogger("runtime.loader")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# The most the logits of the float16 cache slots on CUDA may move from decoder.onnx's (float32
# throughout) for them to serve: float16 keys and values moved them by up to 3.5e-3 on the CPU.
CUDA_SLOT_GAP = 2e-2
# Below this context the key/value cache does not pay, so its graph is not loaded (each session
# holds its own float32 weights): a window that short costs about one graph call either way
# (BENCHMARKS.md, the key/value cache).
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
    attention_vectors: bool = False  # its attention graph also outputs queries and keys
    slot_session: ort.InferenceSession | None = None  # generation on cache slots (runtime.slots)
    kv_slots: int = 0  # how many
    slot_device: str = "cpu"  # where the slots' buffers are, and their type
    slot_dtype: type = np.float32
    draft_tokens: int = 0  # tokens drafted for a lone greedy generation (runtime.speculation)
    provider: str | None = None
    provider_reason: str = ""
    precision: str = "float32"  # of the matrix products: float32, or int8 (LoadOptions.quantize)
    files_checked: bool = False  # its files matched the checksums of its card before loading
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.error is None and self.session is not None

    def fail(self, error: str, stage: str = "failed to load") -> None:
        """Out of service with ``error`` as its reason (its sessions released), logged once."""
        self.error = error
        self.session = self.attention_session = self.decoder_session = None
        self.slot_session = None
        log.error(f"model {self.name} {stage}: {error}", extra={"model": self.name, "error": error})

    def slot_cache(self) -> SlotCache:
        """A cache of ``kv_slots`` sequences for its slot graph, on that graph's device (its
        calls return the logits of up to ``draft_tokens + 1`` tokens, to check a draft)."""
        place = (self.slot_device, self.slot_dtype, self.draft_tokens + 1)
        return SlotCache(self.slot_session, self.kv_slots, self.card["config"], *place)

    @property
    def has_attention(self) -> bool:
        return bool(self.card.get("has_attention")) and self.attention_session is not None

    @property
    def context(self) -> int:
        return int(self.card["context"])

    def logits(
        self, ids: np.ndarray, positions: np.ndarray | None = None, run_options=None
    ) -> np.ndarray:
        """ids (B, T) -> logits (B, K, V) at ``positions`` (B, K) (default: every position)."""
        if positions is None:
            positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        feed = {"input_ids": ids.astype(np.int64), "positions": positions.astype(np.int64)}
        return self.session.run(["logits"], feed, run_options)[0]

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """Logits (V,) of the token after ``ids``, reading at most the model's context."""
        window = np.asarray(ids[-self.context :], dtype=np.int64)[None]
        return self.logits(window, np.asarray([[window.shape[1] - 1]]))[0, 0]

    def attention_weights(self, ids: np.ndarray) -> np.ndarray:
        """ids (B, T), T at most the context -> attention weights (B, layer, head, query, key)."""
        return self.attention_parts(ids, vectors=False)[0]

    def attention_parts(
        self, ids: np.ndarray, vectors: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """ids (B, T) -> (attention weights (B, layer, head, query, key), each layer's queries
        and keys (B, T, width)); the vectors are empty lists unless asked and served
        (``attention_vectors``)."""
        if self.attention_session is None:
            raise ValueError(f"model {self.name} has no attention graph loaded")
        positions = np.full((ids.shape[0], 1), ids.shape[1] - 1, dtype=np.int64)
        feed = {"input_ids": ids.astype(np.int64), "positions": positions}
        if not (vectors and self.attention_vectors):
            return self.attention_session.run(["attentions"], feed)[0], [], []
        layers = int(self.card["config"]["n_layer"])
        names = [output_name(k, layer) for k in ("queries", "keys") for layer in range(layers)]
        weights, *found = self.attention_session.run(["attentions", *names], feed)
        return weights, found[:layers], found[layers:]


def choose_providers(preference: str) -> tuple[list[str], str]:
    """The providers to ask for, and why, from the preference and what this wheel offers."""
    available = ort.get_available_providers()
    if preference == "cpu":
        return [CPU], "CPU asked for"
    if CUDA not in available:
        why = "this onnxruntime build has no CUDA provider"
        if preference == "cuda":
            return [CPU], f"CUDA asked for but {why}; falling back to CPU"
        return [CPU], why
    return [CUDA, CPU], "CUDA provider available"


def session_options(load: LoadOptions) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = load.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The memory pattern planner records the allocations of each distinct set of input shapes
    # and pre-allocates them when that set comes again; the service sends a new shape at nearly
    # every call (batch rows x window, or x cache length: up to 16 x 256 x 4 for the attention
    # decoder). Over 300 random shapes run twice it left resident memory 53 MiB (windows) and
    # 77 MiB (decoder steps) higher than with it off, at the same speed. Turning the CPU arena
    # off as well holds less in a process of its own, but costs 14-15 % of the time, and in the
    # service under load it held no less (python -m bench memory, benchmarks/memory-cpu.json;
    # BENCHMARKS.md, memory).
    options.enable_mem_pattern = False
    # Idle threads spin (burning a core) before they sleep: briefly, so that they catch the next
    # operator of the same call but leave the cores to the next session, request or the event
    # loop (BENCHMARKS.md, threads).
    spin_us = load.thread_spin_us
    spin = "0" if spin_us == 0 else "1"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    if spin_us > 0:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    options.log_severity_level = 3  # errors only: the wheel's CUDA probing is loud otherwise
    return options


def _open(
    path: Path | bytes, options: LoadOptions, providers: list[str], int8: bool = False
) -> ort.InferenceSession:
    """A session of the graph at ``path`` (or serialized in ``path``)."""
    source = path if isinstance(path, bytes) else quantize_int8(path) if int8 else str(path)
    # CUDA's provider rounds matrix products to TF32 unless told otherwise (use_tf32 is on by
    # default): the logits would then drift from the CPU's beyond 1e-3 (LoadOptions.cuda_tf32).
    tf32 = {"use_tf32": "1" if options.cuda_tf32 else "0"}
    chosen = [(name, tf32) if name == CUDA else name for name in providers]
    return ort.InferenceSession(source, session_options(options), providers=chosen)


def _open_int8(path: Path, options: LoadOptions, name: str) -> ort.InferenceSession | None:
    """The graph with int8 weights on the CPU, or None (and a warning) where that fails."""
    try:
        return _open(path, options, [CPU], int8=True)
    except Exception as exc:  # the caller serves float32 instead
        log.warning(
            f"model {name}: int8 quantization of {path.name} failed, serving float32: "
            f"{type(exc).__name__}: {exc}",
            extra={"model": name},
        )
        return None


def _open_slots(model: LoadedModel, options: LoadOptions, int8: bool, provider: str) -> None:
    """The cache slots' decode graph, built from the model's weights (runtime.decode_graph),
    with 8-bit block weights where the model serves int8; where it cannot be built, generation
    goes through decoder.onnx alone. On CUDA (float32 weights only) its keys, values and
    attention are float16, which CUDA's GroupQueryAttention takes, and its buffers stay on the
    GPU; it serves only if its logits agree with decoder.onnx's there (CUDA_SLOT_GAP)."""
    try:
        config = model.card["config"]
        if provider == CUDA:
            if int8:
                raise ValueError("int8 weights have cache slots on the CPU only")
            graph = build_decode_graph(model.folder / "model.onnx", config, cache="float16")
            model.slot_session = _open(graph, options, [CUDA])
            model.slot_device, model.slot_dtype = "cuda", np.float16
            check = SlotCache(model.slot_session, 1, config, "cuda", np.float16)
            gap = slot_logits_gap(check, model.decoder_session)
            if gap > CUDA_SLOT_GAP:
                raise ValueError(f"its logits are {gap:.2g} from decoder.onnx's")
            log.info(f"model {model.name}: cache slots on CUDA, logits within {gap:.2g}")
        else:
            graph = build_decode_graph(model.folder / "model.onnx", config)
            model.slot_session = _open(block_int8(graph) if int8 else graph, options, [CPU])
            # Drafts only where checking several tokens in one call gives each the logits of
            # its own step: float32 on the CPU. int8 quantizes the activations, so the tiny
            # rounding differences of a many-token call can move a logit by a whole step of
            # the quantizer, and a drafted greedy completion would differ from an undrafted one.
            model.draft_tokens = 0 if int8 else options.draft_tokens
        model.kv_slots = options.kv_slots
    except Exception as exc:
        model.slot_session = None
        log.warning(
            f"model {model.name}: no cache slots, generating through decoder.onnx: "
            f"{type(exc).__name__}: {exc}",
            extra={"model": model.name},
        )


@dataclass
class ProviderChoice:
    """Providers for the next session, and why; narrowed to CPU once CUDA proves unusable."""

    providers: list[str]
    reason: str


def load_model(
    folder: Path,
    options: LoadOptions,
    tokenizers: dict[str, Tokenizer] | None = None,
    choice: ProviderChoice | None = None,
) -> LoadedModel:
    """The model of ``folder`` with its sessions, or with the reason it could not load;
    ``tokenizers`` (by sha256) and ``choice`` are shared by the models of one directory."""
    tokenizers = {} if tokenizers is None else tokenizers
    choice = choice or ProviderChoice(*choose_providers(options.provider))
    model = LoadedModel(name=folder.name, folder=folder)
    try:
        root = options.models_dir.resolve()
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
        int8 = options.quantize == "int8" and not probing  # on the CPU for sure
        if int8:
            model.session = _open_int8(folder / "model.onnx", options, model.name)
            int8 = model.session is not None
        if model.session is None:
            if probing:  # ONNX Runtime reports a CUDA provider that cannot load at length
                ort.set_default_logger_severity(4)
            try:
                model.session = _open(folder / "model.onnx", options, choice.providers)
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
        if options.quantize == "int8" and probing:
            if got == CPU:  # CUDA turned out unusable: quantize after all
                session = _open_int8(folder / "model.onnx", options, model.name)
                if session is not None:
                    model.session, int8 = session, True
            else:
                log.info(
                    f"model {model.name}: int8 quantization applies to the CPU provider "
                    f"only; float32 on {got}",
                    extra={"model": model.name},
                )
        if int8:
            model.precision = "int8"
        if model.card.get("has_attention"):
            # Always float32: the maps are read for study, one call each, and int8 weights
            # would change them.
            layers = int(model.card["config"]["n_layer"])
            graph = with_projections(folder / "attention.onnx", layers)
            model.attention_vectors = graph is not None
            model.attention_session = _open(graph or folder / "attention.onnx", options, [got])
        if (
            options.kv_cache
            and CACHE_GRAPH in model.card.get("graphs", {})
            and int(model.card["context"]) >= MIN_CACHE_CONTEXT
        ):
            try:
                if CACHE_GRAPH in problems:
                    raise ValueError(problems[CACHE_GRAPH])
                check_external_data(folder / CACHE_GRAPH, root)
                model.decoder_session = _open(folder / CACHE_GRAPH, options, [got], int8)
            except Exception as exc:  # the model still generates, a window a token
                log.warning(
                    f"model {model.name}: its key/value cache graph did not load, generating "
                    f"without it: {type(exc).__name__}: {exc}",
                    extra={"model": model.name},
                )
        if model.decoder_session is not None and options.kv_slots:
            _open_slots(model, options, int8, got)
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


def load_models(options: LoadOptions) -> dict[str, LoadedModel]:
    """Every model folder of the models directory, loaded or with its error."""
    root = options.models_dir
    if not root.is_dir():
        log.error(f"models directory {root} does not exist")
        return {}
    tokenizers: dict[str, Tokenizer] = {}
    folders = sorted(p.parent for p in root.glob("*/card.json"))
    if not folders:
        log.error(f"models directory {root} holds no model folder (no */card.json)")
    ort.set_default_logger_severity(3)
    choice = ProviderChoice(*choose_providers(options.provider))
    return {folder.name: load_model(folder, options, tokenizers, choice) for folder in folders}


def open_model(folder: Path, threads: int = 2) -> LoadedModel:
    """One model folder on the CPU, checked as the service checks it, for reports, benchmarks
    and tests; ValueError where it does not load."""
    folder = Path(folder)
    model = load_model(folder, LoadOptions(models_dir=folder.parent, threads=threads))
    if not model.ready:
        raise ValueError(f"model {folder} did not load: {model.error}")
    return model
