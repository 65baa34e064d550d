"""Importing bench/'s scripts in a test: they import each other by plain module names, so
bench/ goes on ``sys.path`` for the test's duration, and every module loaded from it is
forgotten afterwards (names like ``run`` or ``load`` must not shadow anything later)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


@contextmanager
def imported_bench_scripts(*names: str) -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(BENCH))
    try:
        yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(BENCH))
        for name, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").parent == BENCH:
                del sys.modules[name]
