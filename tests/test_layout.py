"""The code's shape that contributors rely on: commands on top, encodings as plug-ins."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.encodings import all_methods

PACKAGE = Path(__file__).resolve().parent.parent / "nmt"
COMMANDS = (
    "nmt.train",
    "nmt.translate",
    "nmt.evaluate",
    "nmt.average",
    "nmt.report",
    "nmt.data.__main__",
)
MAX_MODULE_LINES = 400


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_imports_no_other_command(command: str) -> None:
    code = (
        f"import sys, {command}; "
        f"print(','.join(m for m in {COMMANDS!r} if m != {command!r} and m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{command} imports the command modules {out.stdout.strip()}"


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {p: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    too_long = {str(p.relative_to(PACKAGE)): n for p, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_no_code_outside_its_module_names_a_position_encoding() -> None:
    """Adding an encoding is one module and one yaml: nothing else may branch on a name."""
    names = {m.name for m in all_methods()} - {"none"}
    encodings = PACKAGE / "encodings"
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(names & _string_constants(path))
        for path in PACKAGE.rglob("*.py")
        if encodings not in path.parents
    }
    assert not {p: n for p, n in offenders.items() if n}, offenders


def test_every_subpackage_is_installed() -> None:
    """A regular (non-editable) install ships only the packages pyproject.toml lists."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")
    }
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"


def test_every_config_group_directory_is_shipped() -> None:
    """conf/ installs as `nmt.conf`; a config group directory missing from pyproject.toml's
    packages would be left out of a regular install, and setuptools warns about it."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    conf = PACKAGE.parent / "conf"
    groups = {
        ".".join(("nmt", "conf", *p.parent.relative_to(conf).parts)) for p in conf.rglob("*.yaml")
    }
    assert groups <= listed, f"not in pyproject.toml's packages: {sorted(groups - listed)}"
