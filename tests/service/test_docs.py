"""The README documents every setting, with its default."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"`MACHADO_{name.upper()}`" in readme, name
        if name not in ("host", "port"):
            assert f"MACHADO_{name.upper()}" in example, name
