"""User code by reference: ``python:FILE.py:NAME`` and ``MODULE:NAME``.

SAEs (``--sae python:my_arch.py:build``) and evaluators (``--evals python:my_eval.py:MyEval``)
are both loaded here. A file's folder is put on ``sys.path`` first, as ``python FILE.py`` does, so
it can import the modules beside it. ``NAME`` must be callable; it is called with no arguments and its return
value is the object (an SAE, an evaluator instance). Every failure is a one-line error naming
the spec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError


def is_python_spec(spec: str) -> bool:
    return spec.startswith("python:")


def load_object(spec: str) -> tuple[Any, str]:
    """Build the object named by ``python:FILE.py:NAME`` or ``MODULE:NAME``; returns it and NAME."""
    if is_python_spec(spec):
        module, name = _module_from_file(spec[len("python:") :])
    else:
        mod_name, sep, name = spec.partition(":")
        if not sep or not mod_name or not name:
            raise SaebenchError(f"{spec!r} must look like MODULE:NAME or python:FILE.py:NAME")
        module = import_module(mod_name)
    return call(module, name, spec), name


def import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SaebenchError(f"cannot import module {name!r} ({exc}); is it installed / on PYTHONPATH?") from exc


def _module_from_file(rest: str) -> tuple[Any, str]:
    file, sep, name = rest.rpartition(":")
    if not sep or not file or not name:
        raise SaebenchError(f"python:{rest!r} must look like python:FILE.py:NAME")
    path = Path(file)
    if not path.is_file():
        raise SaebenchError(f"file {file!r} does not exist; pass python:PATH/TO/FILE.py:NAME")
    folder = str(path.resolve().parent)
    if folder not in sys.path:  # as `python FILE.py` does: the file may import modules that sit beside it
        sys.path.insert(0, folder)
    mod_name = f"saebench_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise SaebenchError(f"cannot import {file!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise SaebenchError(f"importing {file!r} failed: {type(exc).__name__}: {exc}") from exc
    return module, name


def call(module: Any, name: str, spec: str) -> Any:
    """``module.name()``, with one-line errors for a missing, non-callable or failing ``name``."""
    fn = getattr(module, name, None)
    if fn is None:
        raise SaebenchError(f"{spec}: {module.__name__} has no attribute {name!r}")
    if not callable(fn):
        raise SaebenchError(f"{spec}: {name!r} is not callable; it must be a function or class")
    try:
        return fn()
    except Exception as exc:
        raise SaebenchError(f"{spec}: calling {name}() failed: {type(exc).__name__}: {exc}") from exc
