"""Corpus discovery, splits and cleaning."""

from __future__ import annotations

import unicodedata

import pytest

from tests.conftest import write_corpus
from training import corpus


def test_corpus_manifest_split_is_honoured(synthetic_corpus):
    docs = {d.path: d.split for d in corpus.list_documents(synthetic_corpus)}
    assert docs == {
        "romance/a.txt": "train",
        "romance/b.txt": "train",
        "conto/c.txt": "train",
        "conto/d.txt": "validation",
        "romance/e.txt": "test",
    }


def test_corpus_without_manifest_gets_deterministic_whole_document_split(tmp_path):
    root = write_corpus(tmp_path, manifest=False)
    first = corpus.list_documents(root)
    assert first == corpus.list_documents(root)
    assert {d.path for d in first} == {
        "romance/a.txt",
        "romance/b.txt",
        "conto/c.txt",
        "conto/d.txt",
        "romance/e.txt",
    }
    assert all(d.split == corpus.hash_split(d.path) for d in first)


def test_hash_split_proportions_over_many_paths():
    splits = [corpus.hash_split(f"folder/doc{i}.txt") for i in range(4000)]
    assert 0.90 < splits.count("train") / 4000 < 0.94
    assert splits.count("test") > 100 and splits.count("validation") > 60


def test_corpus_missing_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(corpus.CORPUS_ENV, raising=False)
    with pytest.raises(corpus.CorpusNotFoundError) as error:
        corpus.resolve_corpus_dir(tmp_path / "nowhere")
    message = str(error.value)
    assert "luxedo/dataset-machado-de-assis" in message and "txt/" in message
    assert "--corpus" in message and corpus.CORPUS_ENV in message


def test_corpus_location_from_environment(synthetic_corpus, monkeypatch):
    monkeypatch.setenv(corpus.CORPUS_ENV, str(synthetic_corpus))
    assert corpus.resolve_corpus_dir() == synthetic_corpus


def test_corpus_folder_without_texts_is_rejected(tmp_path):
    with pytest.raises(corpus.CorpusNotFoundError, match=r"no \.txt files"):
        corpus.resolve_corpus_dir(tmp_path)


def test_corpus_manifest_with_unknown_split_is_rejected(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "MANIFEST.tsv").write_text("path\tsplit\na.txt\tdev\n")
    with pytest.raises(ValueError, match="is not one of"):
        corpus.list_documents(tmp_path)


def test_clean_joins_wrapped_prose_and_keeps_paragraphs():
    text = (
        "Ora bem, faz hoje um ano que voltei definitivamente da Europa. O que\n"
        "me lembrou esta data foi, estando a beber café, o pregão de um vendedor\n"
        "de vassouras e espanadores.\n"
        "Durante os meus trinta e tantos anos de diplomacia algumas vezes vim\n"
        "ao Brasil, com licença.\n"
    ) * 3
    cleaned = corpus.clean_text(text, "romance")
    paragraphs = cleaned.split("\n")
    assert len(paragraphs) == 6
    assert paragraphs[0].startswith("Ora bem") and paragraphs[0].endswith("espanadores.")
    assert "O que me lembrou" in paragraphs[0]


def test_clean_keeps_verse_lines():
    verse = "Musa, celebra a cólera do Almada\nQue a fluminense igreja encheu de assombro.\n" * 5
    assert corpus.clean_text(verse, "poesia").count("\n") == 9


def test_clean_keeps_dialogue_and_speaker_lines_apart():
    text = "x" * 60 + " palavra\n— Sim, senhor, disse ele.\n" + "y" * 60 + " palavra\nDURVAL\n"
    text *= 4
    cleaned = corpus.clean_text(text, "teatro")
    assert "\n— Sim" in cleaned and "\nDURVAL" in cleaned


def test_clean_removes_page_artefacts_and_normalises_whitespace():
    text = "Primeira linha.\n\n  12  \nSegunda\tlinha   com   espaços.\x0c\n\u00ad\n"
    assert corpus.clean_text(text) == "Primeira linha.\nSegunda linha com espaços."


def test_clean_keeps_case_punctuation_accents_and_years():
    text = "CAPÍTULO II\nÉ Ação! — disse-lhe; «sim»?\n1888\n"
    assert corpus.clean_text(text) == "CAPÍTULO II\nÉ Ação! — disse-lhe; «sim»?\n1888"


def test_clean_output_is_nfc():
    decomposed = unicodedata.normalize("NFD", "Não há coração.")
    cleaned = corpus.clean_text(decomposed)
    assert cleaned == "Não há coração." and unicodedata.is_normalized("NFC", cleaned)


def test_read_split_unknown_split_rejected(synthetic_corpus):
    with pytest.raises(ValueError, match="is not one of"):
        corpus.read_split(synthetic_corpus, "dev")
