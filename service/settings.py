"""Service settings: environment variables prefixed MACHADO_, or command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.options import LoadOptions

# RFC 6750's bearer token syntax: what every HTTP client can send in a header as it is.
API_KEY = r"^([A-Za-z0-9._~+/-]+=*)?$"


class Settings(BaseSettings):
    """Every knob of the service; each also reads MACHADO_<NAME> from the environment."""

    model_config = SettingsConfigDict(env_prefix="MACHADO_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="folder of model folders to serve")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    threads: int = Field(2, ge=1, le=256, description="ONNX Runtime intra-op threads per session")
    thread_spin_us: int = Field(
        50,
        ge=-1,
        le=100_000,
        description="microseconds an idle ONNX Runtime intra-op thread spins, waiting for the "
        "next operator, before it sleeps: short spins catch the next operator of the same call, "
        "long ones take the cores that the other sessions, request threads and event loop need. "
        "0: sleep at once; -1: ONNX Runtime's own default (a far longer spin)",
    )
    provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="execution provider: auto (CUDA where usable, else CPU), cuda, cpu"
    )
    cuda_tf32: bool = Field(
        False,
        description="on CUDA, let matrix products round their inputs to TF32: faster, but the "
        "logits move from the CPU provider's by more than 1e-3; false: float32 as on the CPU",
    )
    kv_cache: bool = Field(
        True,
        description="generate with a model's key/value cache graph (decoder.onnx) where it has "
        "one: one position's work per new token. Past the context the window restarts at 3/4 of "
        "it (the model then sees 3/4 to all of its context); false: every token recomputes a "
        "full window",
    )
    kv_slots: int = Field(
        16,
        ge=0,
        le=1024,
        description="sequences an attention model generates on cache slots at once: the keys "
        "and values stay in buffers of the whole context that the graph writes in place (on "
        "CUDA in float16, on the GPU), and one loop steps every generation under way in one "
        "call (each slot holds the keys and values of one whole context); a generation that "
        "finds no free slot uses decoder.onnx. 0: decoder.onnx only",
    )
    draft_tokens: int = Field(
        6,
        ge=0,
        le=32,
        description="most tokens guessed ahead of a greedy generation that decodes alone on "
        "float32 cache slots on the CPU (not int8, not CUDA): the tokens that followed the "
        "latest earlier occurrence of its last few tokens (prompt lookup); one call then checks "
        "them all and keeps those the model itself chooses (speculative decoding: the same "
        "tokens, fewer calls). Sampled generations and batched steps are never drafted for. "
        "0: no drafting",
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: on the CPU provider, quantize each graph's matrix-product weights to "
        "int8 at load (ONNX Runtime dynamic quantization; 7-bit weights on x86 CPUs without "
        "VNNI, where 8 bits could saturate); /attention's maps stay float32; ignored on CUDA. "
        "none: the shipped weights as they are",
    )
    malloc_arenas: int = Field(
        2,
        ge=0,
        le=1024,
        description="glibc malloc arenas the process's threads share (mallopt M_ARENA_MAX, set "
        "before the models load), so that request threads do not each keep an arena of freed "
        "memory. 0: glibc's default, 8 per core. MALLOC_ARENA_MAX in the environment wins; no "
        "effect outside glibc",
    )
    max_batch_rows: int = Field(
        16,
        ge=1,
        le=1024,
        description="concurrent requests' graph calls on one model run as one batch of up to "
        "this many sequences (/next-token, and every generation step, the attention model's "
        "key/value cache steps too); 1: each request alone. Never with int8 weights, whose "
        "activation scale would depend on the batch",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="a batch waits up to this many milliseconds for the generations of the "
        "batch before it "
        "that have not asked for their next step yet, so that concurrent generations keep "
        "sharing calls; 0: never wait. A request alone never waits",
    )
    max_concurrency: int = Field(
        8,
        ge=1,
        le=1024,
        description="inference requests running at once; more wait in line (max_queue)",
    )
    max_queue: int = Field(
        32,
        ge=0,
        le=100_000,
        description="inference requests that may wait for a slot while max_concurrency run, "
        "first come first served; more get 429 at once. 0: none wait (429 as soon as every "
        "slot is taken)",
    )
    queue_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="longest a request waits in line for a slot, in seconds, before a 429; "
        "its time limit (request_timeout_s) starts once it has one",
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="per-request time limit in seconds, from the moment it has a slot (504 "
        "past it)",
    )
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        le=600,
        description="on SIGTERM: new connections are refused at once, and requests under way "
        "have this many seconds to finish; what is still running shortly before it ends gets a 503 "
        "(or a stream its error event) saying the server is shutting down. The process then "
        "exits 0. A container's stop grace period must be longer",
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="longest an answer may wait for its client to read, in seconds (the "
        "connection's "
        "buffers full, nothing taken): past it the connection is cut, its request stopped "
        "and its inference slot freed (machado_connections_closed_total{reason='slow_reader'})",
    )
    max_head_bytes: int = Field(
        16_384,
        ge=1024,
        le=1_048_576,
        description="largest request line and headers, in bytes (431 above)",
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="most request headers (431 above)")
    max_answer_items: int = Field(
        200_000,
        ge=1000,
        description="most token entries one answer may hold, each alternative of logprobs "
        "counted (prompt tokens echoed, tokens generated, tokenized or detokenized, scored "
        "with per_token): a request whose answer would hold more is refused with a 422 "
        "before any work, so that no answer takes more than tens of megabytes",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="largest request body, in bytes (413 above)"
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="longest a client may take to send a request's line and headers, in "
        "seconds, from the "
        "moment it connects or from the end of its last answer; past it the connection is "
        "closed (uvicorn alone waits for ever, so idle or trickling connections would pile up)",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="longest a client may take to send a request body, in seconds (408 past "
        "it, and the "
        "connection closed): a client that trickles a body, or stops, holds no connection for "
        "ever",
    )
    max_prompt_chars: int = Field(8_000, ge=1, description="longest prompt, in characters")
    max_new_tokens: int = Field(512, ge=1, description="most tokens one /generate may ask for")
    max_top_k: int = Field(100, ge=1, description="largest top_k of /next-token and /generate")
    max_logprobs: int = Field(20, ge=0, description="most alternatives per generated token")
    max_stop_strings: int = Field(8, ge=0, description="most stop strings per request")
    max_logit_bias: int = Field(
        300, ge=0, description="most tokens one request's logit_bias may list"
    )
    max_score_chars: int = Field(
        200_000,
        ge=1,
        description="longest text /score and /tokenize accept; most ids /detokenize takes",
    )
    max_attention_tokens: int = Field(64, ge=1, description="tokens /attention returns weights for")
    max_compare_models: int = Field(8, ge=1, description="models one /compare may run")
    max_completions: int = Field(4, ge=1, description="most choices (n) of /v1/completions")
    ab_weights: str = Field(
        "",
        description="A/B arms for model 'ab', e.g. 'attention=50,bengio=50' "
        "(empty: every loaded model, equal weights)",
    )
    ab_store: str = Field(
        "sqlite:///data/ab.db",
        description="where the A/B experiment is recorded (every request through an arm, every "
        "reward): sqlite:///PATH (a file, one process; sqlite:///:memory: keeps nothing past "
        "the process) or postgresql://USER:PASSWORD@HOST/DB (one record for several replicas)",
    )
    ab_store_prompts: bool = Field(
        False, description="also record each A/B request's prompt (off: no text is stored)"
    )
    ab_feedback_window_s: float = Field(
        604_800.0,
        gt=0,
        description="seconds after its answer during which a request may get its reward "
        "(POST /ab/feedback; later: 404 expired)",
    )
    ab_effect: float = Field(
        0.05,
        gt=0,
        le=1,
        description="the difference of mean rewards GET /ab sizes the experiment for: the "
        "rewards per arm that a two-sided test (confidence 0.95, power 0.8) needs to detect it",
    )
    api_key: str | None = Field(
        None,
        pattern=API_KEY,
        description="if set, model endpoints need 'Authorization: "
        "Bearer <key>'; /health, /ready, /metrics stay open. Letters, digits and -._~+/ "
        "(then any '=' padding), as RFC 6750 has bearer tokens",
    )
    cors_origins: str = Field(
        "", description="comma-separated origins allowed by CORS (empty: CORS off)"
    )
    log_prompts: bool = Field(False, description="include prompts in the request log lines")
    log_format: Literal["json", "text"] = Field("json", description="log lines as JSON or text")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="lowest level logged"
    )

    def load_options(self) -> LoadOptions:
        """How the runtime opens the models directory, from these settings."""
        return LoadOptions(
            models_dir=self.models_dir,
            threads=self.threads,
            thread_spin_us=self.thread_spin_us,
            provider=self.provider,
            quantize=self.quantize,
            kv_cache=self.kv_cache,
            kv_slots=self.kv_slots,
            draft_tokens=self.draft_tokens,
            cuda_tf32=self.cuda_tf32,
        )


def settings_table() -> str:
    """The settings as a Markdown table (docs/settings.md is this, written by
    `python -m service --settings-table`): variable and flag, default, what it does."""
    rows = [
        "| variable (flag) | default | what it does |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(empty)" if default in (None, "") else f"`{default}`"
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `MACHADO_{name.upper()}` (`{flag}`) | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"
