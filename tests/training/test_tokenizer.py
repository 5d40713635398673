"""Byte-level BPE: every Unicode string survives encode -> decode."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from training.corpus import END_OF_TEXT, clean_text
from training.tokenizer import (
    decode,
    encode,
    end_of_text_id,
    load_tokenizer,
    train_tokenizer,
)

TEXTS = ["Não há coração que resista.", "Capitu olhou para Bentinho — e sorriu."] * 50
TOKENIZER = train_tokenizer(TEXTS, vocab_size=320)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_tokenizer_roundtrip_any_unicode(text):
    """decode(encode(x)) is x in NFC form, for any Unicode string."""
    assert decode(TOKENIZER, encode(TOKENIZER, text)) == unicodedata.normalize("NFC", text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tokenizer_roundtrip_of_cleaned_text_is_exact(text):
    """decode(encode(clean(x))) == clean(x) exactly."""
    cleaned = clean_text(text)
    assert decode(TOKENIZER, encode(TOKENIZER, cleaned)) == cleaned


def test_tokenizer_end_of_text_is_one_token():
    eot = end_of_text_id(TOKENIZER)
    assert eot == 0
    assert encode(TOKENIZER, f"fim{END_OF_TEXT}início").count(eot) == 1


def test_tokenizer_saved_as_standard_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    TOKENIZER.save(str(path))
    loaded = load_tokenizer(path)
    assert encode(loaded, "coração") == encode(TOKENIZER, "coração")
    assert loaded.get_vocab_size() == TOKENIZER.get_vocab_size()


def test_tokenizer_learns_frequent_words():
    assert len(encode(TOKENIZER, "coração")) < len("coração".encode())


def test_tokenizer_prepared_from_train_split_only(tmp_path):
    """A word frequent in test alone never becomes a token: the tokenizer saw only train."""
    from tests.conftest import write_corpus
    from training.data import prepare

    root = write_corpus(tmp_path / "corpus")
    (root / "romance/e.txt").write_text("Xiquexiquezal " * 500)
    prepare(root, tmp_path / "data", vocab_size=400, log=lambda *_: None)
    tokenizer = load_tokenizer(tmp_path / "data" / "tokenizer.json")
    assert tokenizer.get_vocab_size() == 400
    assert len(encode(tokenizer, "Xiquexiquezal")) > 3
