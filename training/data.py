"""Prepared data: the corpus cleaned, tokenized and stored as one token stream per split.

A split's stream is ``<eot> doc1 <eot> doc2 ... <eot> docN <eot>``: every document starts after an
end-of-text token, so its first token is predicted from a clean start. ``meta.json`` records the
characters of each split (code points of the cleaned text), the denominator of bits per character.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from training import corpus
from training.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    end_of_text_id,
    file_sha256,
    train_tokenizer,
)

DATA_ENV = "MACHADO_DATA"
DEFAULT_DATA = Path("data")
FORMAT_VERSION = 1


def resolve_data_dir(data: str | os.PathLike[str] | None = None) -> Path:
    return Path(data or os.environ.get(DATA_ENV) or DEFAULT_DATA).expanduser()


def prepare(
    corpus_dir: Path, data_dir: Path, vocab_size: int = DEFAULT_VOCAB_SIZE, log=print
) -> dict:
    """Clean the corpus, train the tokenizer on the train split, write every split's stream."""
    data_dir.mkdir(parents=True, exist_ok=True)
    texts = {split: corpus.read_split(corpus_dir, split) for split in corpus.SPLITS}
    log(f"training a {vocab_size}-token byte-level BPE on {len(texts['train'])} train documents")
    tokenizer = train_tokenizer(texts["train"], vocab_size)
    tokenizer_path = data_dir / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    eot = end_of_text_id(tokenizer)
    meta: dict = {
        "format": FORMAT_VERSION,
        "corpus": str(corpus_dir),
        "vocab_size": tokenizer.get_vocab_size(),
        "tokenizer_sha256": file_sha256(tokenizer_path),
        "end_of_text_id": eot,
        "splits": {},
    }
    for split, docs in texts.items():
        stream = [eot]
        for ids in tokenizer.encode_batch(docs, add_special_tokens=False):
            stream.extend(ids.ids)
            stream.append(eot)
        np.save(data_dir / f"{split}.npy", np.asarray(stream, dtype=np.uint16))
        chars = sum(len(doc) for doc in docs)
        meta["splits"][split] = {"documents": len(docs), "characters": chars, "tokens": len(stream)}
        log(f"{split}: {len(docs)} documents, {chars:,} characters, {len(stream):,} tokens")
    (data_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def is_prepared(data_dir: Path) -> bool:
    files = ["meta.json", "tokenizer.json"] + [f"{s}.npy" for s in corpus.SPLITS]
    return all((data_dir / f).is_file() for f in files)


def ensure_prepared(
    data_dir: Path, corpus_arg: str | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE, log=print
) -> dict:
    """The prepared data's metadata, preparing it from the corpus first where it is missing."""
    if not is_prepared(data_dir):
        prepare(corpus.resolve_corpus_dir(corpus_arg), data_dir, vocab_size, log)
    return load_meta(data_dir)


def load_meta(data_dir: Path) -> dict:
    return json.loads((data_dir / "meta.json").read_text())


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """The token stream of one split as int64."""
    if split not in corpus.SPLITS:
        raise ValueError(f"split {split!r} is not one of {corpus.SPLITS}")
    return np.load(data_dir / f"{split}.npy").astype(np.int64)
