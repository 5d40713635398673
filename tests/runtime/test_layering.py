"""The layers stay apart: the inference core knows no HTTP and no torch, the service no torch and
no training code, and nothing edits sys.path to find its imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "service", "training", "bench")
# An HTTP status as code writes one: a number of the 4xx or 5xx classes that the service answers.
HTTP_STATUS = re.compile(r"\b(400|401|403|404|405|408|409|413|415|422|429|431|499|500|503|504)\b")


def modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layering_the_runtime_knows_no_http_and_no_torch():
    for path in modules("runtime"):
        wrong = imported(path) & {"fastapi", "starlette", "uvicorn", "service", "training", "torch"}
        assert not wrong, (path.name, wrong)


def test_layering_no_module_that_runs_onnx_speaks_http():
    """A module that imports onnxruntime imports no web framework and writes no HTTP status:
    statuses belong to service/errors.py's table."""
    runners = [p for p in modules(*PACKAGES) if "onnxruntime" in imported(p)]
    assert any(p.parent.name == "runtime" for p in runners)
    for path in runners:
        assert not imported(path) & {"fastapi", "starlette"}, path
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        assert not HTTP_STATUS.search(code), (path, HTTP_STATUS.search(code).group())


@pytest.mark.parametrize("package", ["service", "runtime"])
def test_layering_serving_imports_no_torch_and_no_training(package):
    for path in modules(package):
        wrong = imported(path) & {"torch", "training", "bench"}
        assert not wrong, (path.name, wrong)


def test_layering_nothing_edits_sys_path():
    """Every entry point runs as a module (`python -m ...`) from the repository root."""
    files = [*modules(*PACKAGES, "scripts", "tests")]
    offenders = [str(p.relative_to(ROOT)) for p in files if "sys.path" in p.read_text()]
    assert offenders == [str(Path(__file__).relative_to(ROOT))], offenders


def test_layering_no_python_file_over_450_lines():
    """One file per concept, each small enough to read in one sitting."""
    files = modules(*PACKAGES, "scripts", "tests")
    long = {
        str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long


def test_layering_nothing_imports_the_tests():
    """The tests may import the code; the code, the benchmarks and the scripts never the tests."""
    for path in modules(*PACKAGES, "scripts"):
        assert "tests" not in imported(path), path
