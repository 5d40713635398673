"""A model folder, checked before ONNX Runtime reads it: its card, the checksums of its files,
and that nothing it names lies outside the models directory."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("runtime.folder")

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
