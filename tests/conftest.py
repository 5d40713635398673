"""Shared fixtures: a small synthetic corpus, its prepared data, and the real corpus if present."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests (hypothesis, schemathesis) draw the same examples on every run by default, so
# CI passes or fails on the code, not on the draw. HYPOTHESIS_PROFILE=explore draws new random
# examples (500 where a test sets no number) to hunt for bugs: run it when changing a schema.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _experiment_record_apart(tmp_path_factory):
    """Services started by the tests (`python -m service` on a port) record their A/B
    experiment in a file of this test run, not in the checkout's data/."""
    store = tmp_path_factory.mktemp("ab") / "ab.db"
    os.environ.setdefault("MACHADO_AB_STORE", f"sqlite:///{store}")


REAL_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "machado"

WORDS = (
    "o a de que e do da em um para é com não uma os no se na por mais as dos como mas foi "
    "ao ele das tem à seu sua ou ser quando muito há nos já está eu também só pelo pela "
    "até isso ela entre era depois sem mesmo aos ter seus quem nas me esse eles estão "
    "você tinha foram Capitu Bentinho Brás Cubas Quincas Borba Rubião Sofia Aires Fidélia "
    "coração memória olhos "
).split()


def synthetic_document(rng: random.Random, paragraphs: int) -> str:
    """Text wrapped at 70 columns like the PDF extractions, with a page number here and there."""
    lines = []
    for _ in range(paragraphs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 60))]
        paragraph = " ".join(words).capitalize() + "."
        line = ""
        for word in paragraph.split():
            if len(line) + len(word) + 1 > 70:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        if rng.random() < 0.1:
            lines.append(str(rng.randint(1, 300)))
    return "\n".join(lines) + "\n"


def write_corpus(root: Path, manifest: bool = True, seed: int = 0) -> Path:
    rng = random.Random(seed)
    layout = [
        ("romance/a.txt", "train"),
        ("romance/b.txt", "train"),
        ("conto/c.txt", "train"),
        ("conto/d.txt", "validation"),
        ("romance/e.txt", "test"),
    ]
    rows = ["path\tcategory\tchars\tsha256\tsplit"]
    for path, split in layout:
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        text = synthetic_document(rng, 60 if split == "train" else 15)
        file.write_text(text, encoding="utf-8")
        rows.append(f"{path}\t{path.split('/')[0]}\t{len(text)}\t-\t{split}")
    if manifest:
        (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def prepared(synthetic_corpus, tmp_path_factory) -> Path:
    from training.data import prepare

    out = tmp_path_factory.mktemp("data")
    prepare(synthetic_corpus, out, vocab_size=400, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def real_corpus() -> Path:
    import os

    path = Path(os.environ.get("MACHADO_CORPUS") or REAL_CORPUS)
    if not (path / "MANIFEST.tsv").is_file():
        pytest.skip(f"real corpus not found at {path} (set MACHADO_CORPUS to run this test)")
    return path


@pytest.fixture(scope="session")
def real_data(real_corpus, tmp_path_factory) -> Path:
    """The real corpus prepared (tokenizer trained on its train split) once per test run."""
    from training.data import prepare

    out = tmp_path_factory.mktemp("real-data")
    prepare(real_corpus, out, log=lambda *_: None)
    return out


def concurrently(fn, inputs: list) -> list:
    """``fn(x)`` for every input, each in its own thread, started together."""
    results: list = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(inputs[i])
        except Exception as error:
            results[i] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a caller hung"
    return results
