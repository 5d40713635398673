"""Every model of a models directory loaded and asked to work, as a server would before serving.

For each model: the card and the checksums of its files (the loader refuses a damaged folder),
a finite next-token distribution, 8 greedy tokens, attention rows that sum to 1, and the key/value
cache's greedy tokens equal to those of full windows. ``python -m service --check`` runs it with
the service's settings; ``python -m runtime.check [MODELS_DIR]`` with the runtime alone (no
torch, no FastAPI), one line per model and exit status 1 if any fails.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

from runtime.engine import Engine
from runtime.loader import LoadedModel, load_models
from runtime.options import LoadOptions
from runtime.results import Generation, GenerationRequest

CACHE_CHECK_TOKENS = 20
PROBE = "Capitu olhou para mim"


def probe(engine: Engine) -> None:
    """One next-token call, whose distribution must be finite: a model whose graphs load but
    cannot run, or answer nonsense, fails here instead of on its first request."""
    entropy = engine.next_token(PROBE, 1).entropy_bits
    if not math.isfinite(entropy):
        raise ValueError(f"its next-token entropy on {PROBE!r} is {entropy}")


def greedy(engine: Engine, tokens: int) -> Generation:
    *_, final = engine.generate(GenerationRequest(PROBE, tokens))
    return final


def check_model(model: LoadedModel) -> str:
    """What ``model`` made of the probe, or ValueError saying what failed."""
    engine = Engine(model)
    probe(engine)
    final = greedy(engine, 8)
    if model.has_attention:
        maps = np.asarray(engine.attention(PROBE, model.context, None, None).attention)
        worst = float(np.abs(maps.sum(-1) - 1.0).max())
        if worst > 1e-3:
            raise ValueError(f"its attention rows sum to 1 within {worst:.2g}, not 1e-3")
    if model.decoder_session is not None:
        cached = greedy(engine, CACHE_CHECK_TOKENS)
        windows = greedy(
            Engine(dataclasses.replace(model, decoder_session=None)), CACHE_CHECK_TOKENS
        )
        if [s.id for s in cached.steps] != [s.id for s in windows.steps]:
            raise ValueError("its key/value cache graph strays from the full windows (greedy)")
    return final.text


def check_models(options: LoadOptions) -> int:
    """One line per model on stdout; 1 if any model failed or there is none, else 0."""
    models = load_models(options)
    if not models:
        what = "holds no model folder" if options.models_dir.is_dir() else "does not exist"
        print(f"error: the models directory {options.models_dir} {what}", file=sys.stderr)
        return 1
    failed = 0
    for name, model in sorted(models.items()):
        if not model.ready:
            print(f"{name}: FAILED to load: {model.error}")
            failed += 1
            continue
        started = time.perf_counter()
        try:
            text = check_model(model)
        except Exception as error:  # reported, and the next model still checked
            print(f"{name}: FAILED on its probe: {type(error).__name__}: {error}")
            failed += 1
            continue
        ms = (time.perf_counter() - started) * 1000
        where = f"{model.provider} ({model.precision})"
        print(f"{name}: ok on {where}: {PROBE!r} -> {text!r} ({ms:.0f} ms)")
    print(f"{len(models) - failed} of {len(models)} models ok")
    return 1 if failed else 0


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        raise SystemExit(0)
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    raise SystemExit(check_models(LoadOptions(models_dir=directory)))
