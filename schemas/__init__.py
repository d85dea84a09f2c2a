"""The JSON Schema contracts (click event v1, trend v1, DLQ record v1) and their compiled validators.

The `.json` files in this folder are the single source of truth; this module only locates and compiles
them (once, with fastjsonschema). No Kafka I/O here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

SCHEMA_DIR = Path(__file__).resolve().parent
CLICK_EVENT_V1 = "click-event.v1"
TREND_V1 = "trend.v1"
DLQ_RECORD_V1 = "dlq-record.v1"
CATALOGUE_ITEM_V1 = "catalogue-item.v1"
CANDIDATES_V1 = "candidates.v1"


def schema_path(name: str) -> Path:
    """Path of the schema file `name` (e.g. ``"click-event.v1"``)."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in SCHEMA_DIR.glob("*.json"))
        raise FileNotFoundError(f"no schema {name!r} in {SCHEMA_DIR}; known: {known}")
    return path


def load_schema(name: str) -> dict[str, Any]:
    return orjson.loads(schema_path(name).read_bytes())


@functools.cache
def validator(name: str) -> Callable[[Any], Any]:
    """The compiled validator of schema `name`; raises fastjsonschema.JsonSchemaException on bad input."""
    return fastjsonschema.compile(load_schema(name))


ValidationError = fastjsonschema.JsonSchemaException
