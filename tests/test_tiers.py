"""The test tiers are declared by name in conftest.py: a renamed or deleted test must not slip out of
the slow tier (or leave a stale name behind) unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import SLOW_MODULES, SLOW_TESTS

HERE = Path(__file__).parent


def test_every_slow_name_exists():
    for module in SLOW_MODULES:
        assert (HERE / module).is_file(), module
    for name in SLOW_TESTS:
        module, test = name.split("::")
        tree = ast.parse((HERE / module).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert test in defined, f"{name} is in conftest.SLOW_TESTS but {module} defines no such test"
