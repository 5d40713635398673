"""Blank text: the schema's pattern and the validator agree on every character."""

from __future__ import annotations

import re
from typing import Annotated

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from service.schemas import NOT_BLANK

# ECMAScript's \s (the dialect of OpenAPI patterns): WhiteSpace and LineTerminator.
ECMA_SPACE = set("\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | {
    chr(c) for c in range(0x2000, 0x200B)
}
VALIDATOR = TypeAdapter(Annotated[str, Field(pattern=NOT_BLANK)])


def _accepted(text: str) -> bool:
    try:
        VALIDATOR.validate_python(text)
    except ValidationError:
        return False
    return True


def test_validator_and_schema_pattern_agree_on_every_character():
    """pydantic-core (Rust regex) and Python's re (what schemathesis and hypothesis read the
    schema with) accept the same one-character strings, and neither accepts whitespace of any
    dialect."""
    for code in [*range(0x3100), *range(0xFE00, 0x10000)]:
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        by_schema = re.search(NOT_BLANK, char) is not None
        assert _accepted(char) == by_schema, hex(code)
        blank = char.isspace() or char in ECMA_SPACE or re.fullmatch(r"\s", char) is not None
        assert by_schema == (not blank), hex(code)


@pytest.mark.parametrize("text", ["\u0085", "\ufeff", " \t\u3000", "\u001c"])
def test_api_rejects_blank_prompts_of_any_dialect(client, text):
    response = client.post("/next-token", json={"model": "bengio", "prompt": text})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "prompt"
    ok = client.post("/next-token", json={"model": "bengio", "prompt": text + "a"})
    assert ok.status_code == 200
