"""``python -m bench NAME [options]``: run one benchmark (``python -m bench`` lists them)."""

from __future__ import annotations

import importlib
import subprocess
import sys

from bench import common

# name: (module:function, what it measures)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "service": ("bench.service:main", "HTTP latency and throughput of one model, beside ORT"),
    "load": ("bench.load:main", "many clients mixing the endpoints on a served instance"),
    "compare": ("bench.compare:main", "/compare of several checkouts or settings, in turns"),
    "score": ("bench.score:main", "/score speed on a long text, in several setups"),
    "batching": ("bench.batching:main", "generations batched across requests, in-process"),
    "choices": ("bench.choices:main", "n completions of one prompt: one batch vs one by one"),
    "sampling": ("bench.sampling:main", "the cost of choosing a token on real logits"),
    "generation": ("bench.generation:main", "repetition and quality of text per sampling setting"),
    "quantize": ("bench.quantize:main", "int8 weights against float32: speed, memory, BPC"),
    "memory": ("bench.memory:main", "what ONNX Runtime sessions hold as input shapes vary"),
    "burst-memory": ("bench.burst_memory:main", "memory kept after bursts of large requests"),
    "ab-store": ("bench.ab_store:main", "what recording the A/B experiment costs a request"),
    "attack": ("bench.attack:main", "a running service under careless or hostile clients"),
    "slots": ("bench.slots:main", "a decode step: decoder.onnx against the cache slots"),
    "llama-server": (
        "bench.llama_server:main",
        "this service against llama.cpp's server, same weights",
    ),
    "gpu-serving": ("bench.gpu_serving:main", "HTTP serving speed on CUDA beside the CPU provider"),
    "cuda-check": ("bench.cuda_check:main", "the CUDA provider against the CPU provider"),
    "export": ("bench.export:main", "this checkout's exporter against the shipped graphs"),
    "attention": ("bench.torch_speed:attention_main", "self-attention: loops, matrix, fused"),
    "inference": ("bench.torch_speed:inference_main", "ONNX Runtime vs PyTorch eager (CPU)"),
    "train": ("bench.torch_speed:train_main", "training throughput of a preset (tokens/s)"),
    "docker": ("bench/docker.sh", "build time and size of each service image"),
}


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in BENCHMARKS.items()]
    return (
        "usage: python -m bench NAME [options]   (python -m bench NAME --help for its options)"
        "\n\nbenchmarks:\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"error: no benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    target = BENCHMARKS[name][0]
    if target.endswith(".sh"):
        return subprocess.run(["bash", str(common.ROOT / target), *rest]).returncode
    common.COMMAND[:] = argv
    sys.argv[0] = f"python -m bench {name}"  # argparse's prog in usage and errors
    module, function = target.split(":")
    code = getattr(importlib.import_module(module), function)(rest)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
