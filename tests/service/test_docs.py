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


def test_compose_stop_grace_period_covers_the_drain():
    """docker compose stop sends SIGTERM, then SIGKILL after stop_grace_period: the period must
    outlast the drain time (the default, and the one .env.example sets), with room to exit."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    example = (ROOT / ".env.example").read_text()
    drain = float(re.search(r"^MACHADO_DRAIN_TIMEOUT_S=(\S+)", example, re.M).group(1))
    drain = max(drain, Settings.model_fields["drain_timeout_s"].default)
    for name in ("api", "api-gpu"):
        grace = compose["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) >= drain + 5, (name, grace, drain)


def test_compose_passes_every_setting_with_the_service_default():
    """docker-compose.yml gives the container every setting, from .env or the shell, else the
    service's own default (host, port, models folder and provider are the image's)."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["services"]["api"]["environment"]
    assert environment == compose["services"]["api-gpu"]["environment"]
    for name, field in Settings.model_fields.items():
        if name in ("host", "port", "models_dir", "provider"):
            continue
        default = field.default
        written = (
            ""
            if default is None
            else str(default).lower()
            if default is True or default is False
            else str(default)
        )
        assert environment[f"MACHADO_{name.upper()}"] == f"${{MACHADO_{name.upper()}:-{written}}}"
