"""The Machado de Assis corpus: find it, read its split, clean its text.

The corpus is a folder of UTF-8 texts. Where it has a ``MANIFEST.tsv`` (columns ``path`` and
``split``), that split is honoured; otherwise every document gets a deterministic split from a
hash of its relative path, so whole works never straddle two splits.

Cleaning undoes the PDF layout and nothing else: NFC, hard line breaks inside paragraphs joined,
whitespace normalised, page artefacts (bare page numbers, control characters) removed. Case,
punctuation, accents and line structure of verse are kept: cleaning never makes the text easier
to predict by throwing information away.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

CORPUS_ENV = "MACHADO_CORPUS"
DEFAULT_CORPUS = Path("../shared/corpus/machado")
SPLITS = ("train", "validation", "test")
END_OF_TEXT = "<|endoftext|>"

HOW_TO_GET = (
    "The corpus is the folder txt/ of the public dataset luxedo/dataset-machado-de-assis "
    "(GitHub). Download it, then point the project at it with --corpus DIR or the environment "
    f"variable {CORPUS_ENV}=DIR (the folder that holds the category folders, and optionally "
    "MANIFEST.tsv with columns path and split)."
)


class CorpusNotFoundError(FileNotFoundError):
    """The corpus folder is missing or holds no texts."""


@dataclass(frozen=True)
class Document:
    path: str  # relative to the corpus folder, '/'-separated
    category: str  # first folder of the path ('' at the top level)
    split: str  # train, validation or test


def resolve_corpus_dir(corpus: str | os.PathLike[str] | None = None) -> Path:
    """The corpus folder from the argument, else the environment, else the default; checked."""
    chosen = corpus or os.environ.get(CORPUS_ENV) or DEFAULT_CORPUS
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise CorpusNotFoundError(f"corpus folder {str(path)!r} does not exist. {HOW_TO_GET}")
    if not any(path.rglob("*.txt")):
        raise CorpusNotFoundError(f"corpus folder {str(path)!r} holds no .txt files. {HOW_TO_GET}")
    return path


def hash_split(relative_path: str, validation: float = 0.03, test: float = 0.05) -> str:
    """A deterministic split for a document with no manifest, from its path alone."""
    bucket = int(hashlib.sha256(relative_path.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test:
        return "test"
    if bucket < test + validation:
        return "validation"
    return "train"


def list_documents(corpus_dir: Path) -> list[Document]:
    """Every document of the corpus with its split, sorted by path."""
    manifest = corpus_dir / "MANIFEST.tsv"
    docs: list[Document] = []
    if manifest.is_file():
        with manifest.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = {"path", "split"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{manifest} lacks the column(s) {sorted(missing)}")
            for row in reader:
                if row["split"] not in SPLITS:
                    raise ValueError(
                        f"{manifest}: split {row['split']!r} of {row['path']} "
                        f"is not one of {SPLITS}"
                    )
                docs.append(Document(row["path"], row["path"].partition("/")[0], row["split"]))
    else:
        for file in corpus_dir.rglob("*.txt"):
            rel = file.relative_to(corpus_dir).as_posix()
            category = rel.partition("/")[0] if "/" in rel else ""
            docs.append(Document(rel, category, hash_split(rel)))
    return sorted(docs, key=lambda d: d.path)


# Characters a PDF extraction leaves behind that carry no text: controls other than the
# newline, soft hyphens, zero-width spaces, byte-order marks.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f\u00ad\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_PAGE_NUMBER = re.compile(r"\d{1,3}")
# A line that ends a sentence, a speech or a parenthesis may end a paragraph: keep its break.
_MAY_END_PARAGRAPH = tuple(".!?:;…)]»\"”'’")
# Categories whose line breaks are the text itself.
_VERSE = {"poesia"}


def _wrap_width(lines: list[str]) -> int:
    """The width a document was wrapped at: the 90th percentile of its non-empty line lengths."""
    lengths = sorted(len(line) for line in lines if line)
    return lengths[int(0.9 * (len(lengths) - 1))] if lengths else 0


def _continues(line: str, following: str, width: int) -> bool:
    """Whether a hard break between two lines sits inside a paragraph (layout, not text)."""
    if not following or len(line) < width - 12 or line.endswith(_MAY_END_PARAGRAPH):
        return False
    # Dialogue dashes and all-capital speaker names (theatre) start a new paragraph.
    return not (following[0] in "—–-" or following.isupper())


def clean_text(text: str, category: str = "") -> str:
    """The text with its PDF layout undone and nothing of its content lost."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text.replace("\f", "\n"))
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    lines = [line for line in lines if not _PAGE_NUMBER.fullmatch(line)]
    width = _wrap_width(lines)
    join = category not in _VERSE and width >= 55
    paragraphs: list[str] = []
    current = ""
    for i, line in enumerate(lines):
        if not line:
            if current:
                paragraphs.append(current)
                current = ""
            continue
        # A word split at the margin keeps its hyphen and loses the space; others get one space.
        current = (current + line) if current.endswith("-") else (f"{current} {line}".lstrip())
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not (join and _continues(line, following, width)):
            paragraphs.append(current)
            current = ""
    if current:
        paragraphs.append(current)
    return unicodedata.normalize("NFC", "\n".join(paragraphs))


def read_split(corpus_dir: Path, split: str) -> list[str]:
    """The cleaned documents of one split, in path order."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    texts = []
    for doc in list_documents(corpus_dir):
        if doc.split != split:
            continue
        file = corpus_dir / doc.path
        if not file.is_file():
            raise CorpusNotFoundError(f"{file} is listed in the manifest but missing. {HOW_TO_GET}")
        texts.append(clean_text(file.read_text(encoding="utf-8"), doc.category))
    if not texts:
        raise CorpusNotFoundError(f"corpus {corpus_dir} has no document in split {split!r}")
    return texts
