"""The README documents every setting, with its default, and lays out every file."""

from __future__ import annotations

import re
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


def test_readme_gives_each_setting_its_default():
    """The settings table's default column is the default the service runs with."""
    readme = (ROOT / "README.md").read_text()
    wrong = {}
    for name, field in Settings.model_fields.items():
        row = re.search(rf"^\| `MACHADO_{name.upper()}` [^|]*\| (.*?) \|", readme, re.M)
        written = row.group(1) if row else None
        expected = "(empty)" if field.default in (None, "") else f"`{field.default}`"
        if written != expected:
            wrong[name] = (written, expected)
    assert not wrong, wrong


def test_readme_layout_names_every_module_and_script():
    """A module or script added without its place in the README's Layout is missed here."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    files = [*(ROOT / "training").glob("*.py"), *(ROOT / "service").glob("*.py")]
    files += [f for f in (ROOT / "scripts").iterdir() if f.is_file()]
    missing = [
        str(f.relative_to(ROOT)) for f in files if f.name != "__init__.py" and f.name not in layout
    ]
    assert not missing, missing
