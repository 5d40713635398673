"""Bring the results of scripts/gpu_finish.sh home: the Bengio sweep and the CUDA provider check.

    python scripts/ship_sweep.py DEVICE_OUT [--models models]
    python scripts/ship_sweep.py --sweep runs/sweep-bengio-cpu --seeds runs/sweep-bengio-cpu-seeds

(the second: a sweep run here, by scripts/cpu_sweep.sh, instead of one that came back from the GPU)

- unpacks the release parts of DEVICE_OUT into gpu/sweep-release;
- replaces models/bengio with the sweep's chosen trial only if its validation loss (the
  `evaluate` command, whole split) is lower than the shipped model's; either way the sweep's
  table goes to models/bengio/sweep.json, so the report shows how the model was tuned;
- if that moves bengio's context, replaces models/attention-seed with the seed model trained
  at the new context on the same GPU (the two are compared at equal context);
- copies the CUDA check and the CUDA service benchmark into benchmarks/;
- where a model was replaced, measures the context curves and the attention heads again
  (`python -m training context` and `heads`, about 4 minutes on 2 CPU threads; the report would
  otherwise call them stale);
- regenerates models/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_NOTE = (
    "Retrained at the context the Bengio sweep chose, so that the two "
    "compare at equal context: the shipped seed recipe (2,048 tokens a step, dropout 0.1, "
    "16,285 steps) on {hardware}; evaluated there in fp32, and with fp16-rounded weights."
)
NOTE = (
    "Chosen by `python -m training sweep` on the validation split (models/bengio/sweep.json): "
    "trials trained side by side on {hardware}, each with the same step budget and seed; "
    "evaluated there in fp32, and with fp16-rounded weights."
)


def where(hardware: str, each: bool = False) -> str:
    """How a note names the machine: "one NVIDIA H100 ...", or a CPU with its threads."""
    if "thread" in hardware:
        return f"a CPU ({hardware}{' each' if each else ''})"
    return f"one {hardware}"


def export(run: Path, folder: Path, note: str) -> None:
    evals = [run / f"eval-{s}.json" for s in ("validation-float32", "test-float32", "test-float16")]
    shutil.rmtree(folder)
    subprocess.run(
        [
            sys.executable,
            *("-m", "training", "export", str(run / "best"), "--out", str(folder)),
            *("--note", note),
            *(arg for e in evals for arg in ("--eval", str(e))),
        ],
        check=True,
        cwd=ROOT,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "device_out", type=Path, nargs="?", help="the folder $OUT came back in (or --sweep)"
    )
    parser.add_argument(
        "--sweep", type=Path, default=None, help="a finished sweep folder on this machine instead"
    )
    parser.add_argument(
        "--seeds",
        type=Path,
        default=None,
        help="seed models trained at other contexts, context=N/ (default: RELEASE/seeds)",
    )
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--release", type=Path, default=ROOT / "gpu" / "sweep-release")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    if (args.device_out is None) == (args.sweep is None):
        parser.error("give either DEVICE_OUT or --sweep")
    py = sys.executable

    args.benchmarks.mkdir(parents=True, exist_ok=True)
    cuda_check = args.benchmarks / "ort-cuda.json"
    if args.sweep is not None:
        sweep_dir = args.sweep
    else:
        if (args.device_out / "ort-cuda.json").is_file():  # the provider check stands alone
            shutil.copyfile(args.device_out / "ort-cuda.json", cuda_check)
            print(f"copied the CUDA provider check to {cuda_check}")
        shutil.rmtree(args.release, ignore_errors=True)
        if sorted(args.device_out.glob("release.tar.z.*")):
            unpack = ROOT / "scripts" / "release_pack.py"
            subprocess.run(
                [py, str(unpack), "unpack", str(args.device_out), "--out", str(args.release)],
                check=True,
            )
        sweep_dir = args.release / "sweep"
    args.seeds = args.seeds or args.release / "seeds"
    replaced = False
    if (sweep_dir / "sweep.json").is_file():
        replaced = ship_bengio(args, sweep_dir)
        for found in (sweep_dir / "gpu").glob("service-cuda-*.json"):
            shutil.copyfile(found, args.benchmarks / found.name)
    else:
        print("no finished sweep came back: models/ left as it is")

    context = args.benchmarks / "context-test.json"
    heads = args.benchmarks / "heads-test.json"
    if replaced:
        for command, path, what in (
            ("context", context, "the context curves"),
            ("heads", heads, "the attention heads"),
        ):
            measured = subprocess.run(
                [py, "-m", "training", command, "--models", str(args.models), "--json", str(path)],
                cwd=ROOT,
            )
            if measured.returncode:
                print(f"{what} were not measured again: {path} is stale")
    # The report prints these paths in its commands: relative to the repository where they can be.
    shown = [
        str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
        for p in (cuda_check, context, heads)
    ]
    report = ["-m", "training", "report", "--models", str(args.models)]
    subprocess.run(
        [
            py,
            *report,
            "--cuda-check",
            shown[0],
            "--context-bench",
            shown[1],
            "--heads-bench",
            shown[2],
        ],
        check=True,
        cwd=ROOT,
    )
    return 0


def ship_bengio(args: argparse.Namespace, sweep_dir: Path) -> bool:
    """Whether models/bengio (and maybe models/attention-seed) was replaced."""
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    chosen = sweep_dir / sweep["chosen"]
    new_loss = json.loads((chosen / "eval-validation-float32.json").read_text())["loss"]
    folder = args.models / "bengio"
    old_loss = json.loads((folder / "card.json").read_text())["metrics"]["validation"]["loss"]
    print(f"validation loss: shipped {old_loss:.4f}, sweep's {sweep['chosen']} {new_loss:.4f}")
    if new_loss < old_loss:
        hardware = sweep["trials"][sweep["chosen"]].get("hardware", "GPU")
        context = json.loads((chosen / "best" / "config.json").read_text())["config"]["context"]
        seed_folder = args.models / "attention-seed"
        seed_context = json.loads((seed_folder / "card.json").read_text())["context"]
        if context != seed_context:
            seed_run = args.seeds / f"context={context}"
            if not (seed_run / "best").is_dir():
                raise SystemExit(f"no seed model trained at context {context}: nothing replaced")
            seed_summary = seed_run / "summary.json"
            seed_hardware = (
                json.loads(seed_summary.read_text())["hardware"]
                if seed_summary.is_file()
                else hardware
            )
            export(seed_run, seed_folder, SEED_NOTE.format(hardware=where(seed_hardware)))
            print(f"models/attention-seed replaced by the seed model at context {context}")
        export(chosen, folder, NOTE.format(hardware=where(hardware, each=True)))
        print(f"models/bengio replaced by {sweep['chosen']}")
    else:
        print("models/bengio kept: the sweep found nothing better on validation")
    (folder / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    return new_loss < old_loss


if __name__ == "__main__":
    sys.exit(main())
