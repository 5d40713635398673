"""Pack run folders into a few small files for transfer, and unpack them again.

Weights travel as fp16 (what models/ ships) with their bytes split into planes (all high bytes,
then all low bytes) before zlib, which compresses fp16 weights far better than the raw bytes.
Everything else of a run (config, metrics, curves, evaluations) travels as it is.

    python scripts/release_pack.py pack RUN_DIR... --out DIR [--chunk-mib 15]
    python scripts/release_pack.py unpack DIR --out RUNS_DIR
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

WEIGHTS = "model.safetensors"


def _shuffle(array: np.ndarray) -> bytes:
    planes = np.ascontiguousarray(array.view(np.uint8).reshape(-1, array.itemsize).T)
    return planes.tobytes()


def _unshuffle(blob: bytes, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    planes = np.frombuffer(blob, dtype=np.uint8).reshape(itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def pack(runs: list[Path], out: Path, chunk_mib: float) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for run in runs:
            for file in sorted(p for p in run.rglob("*") if p.is_file()):
                rel = Path(run.name) / file.relative_to(run)
                if file.name == "train_state.pt" or "last" in rel.parts:
                    continue  # optimizer state and the last step stay behind
                if file.name == WEIGHTS:
                    tensors = load_file(str(file))
                    index, blobs, offset = {}, [], 0
                    for name, tensor in tensors.items():
                        blob = _shuffle(tensor.astype(np.float16))
                        index[name] = {
                            "shape": list(tensor.shape),
                            "offset": offset,
                            "length": len(blob),
                        }
                        blobs.append(blob)
                        offset += len(blob)
                    payload = json.dumps(index).encode() + b"\n" + b"".join(blobs)
                    info = tarfile.TarInfo(str(rel) + ".f16shuf")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                else:
                    tar.add(file, arcname=str(rel))
    packed = zlib.compress(buffer.getvalue(), 6)
    out.mkdir(parents=True, exist_ok=True)
    size = int(chunk_mib * 2**20)
    for i in range(0, len(packed), size):
        (out / f"release.tar.z.{i // size:02d}").write_bytes(packed[i : i + size])
    print(f"packed {len(buffer.getvalue()) / 2**20:.1f} MiB into {len(packed) / 2**20:.1f} MiB")


def unpack(folder: Path, out: Path) -> None:
    parts = sorted(folder.glob("release.tar.z.*"))
    if not parts:
        raise SystemExit(f"{folder} holds no release.tar.z.NN parts")
    raw = zlib.decompress(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            target = out / member.name
            if not target.resolve().is_relative_to(out.resolve()):
                raise SystemExit(f"refusing to write {member.name} outside {out}")
            target.parent.mkdir(parents=True, exist_ok=True)
            content = tar.extractfile(member).read()
            if member.name.endswith(".f16shuf"):
                header, _, body = content.partition(b"\n")
                tensors = {
                    name: _unshuffle(
                        body[m["offset"] : m["offset"] + m["length"]], np.float16, m["shape"]
                    )
                    for name, m in json.loads(header).items()
                }
                save_file(tensors, str(target.with_suffix("")))
            else:
                target.write_bytes(content)
    print(f"unpacked {len(parts)} parts into {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="run folders -> compressed parts")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chunk-mib", type=float, default=15.0)
    p = sub.add_parser("unpack", help="compressed parts -> run folders (weights as fp16)")
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.runs, args.out, args.chunk_mib)
    else:
        unpack(args.folder, args.out)


if __name__ == "__main__":
    main()
