"""The item catalogue on the `items` topic: catalogue record v1 validation and the text a scorer reads.

A record is keyed by the item id (UTF-8) and holds `{"item_id", "text"}` (or `"title"`), checked
against schemas/catalogue-item.v1.json; the key must equal `item_id`. A tombstone (null value) removes the
item. The text is what the language model reads, so its length is bounded by the schema.
No Kafka I/O here.
"""

from __future__ import annotations

import orjson

from schemas import CATALOGUE_ITEM_V1, ValidationError, validator

_validate_item = validator(CATALOGUE_ITEM_V1)


def validate_catalogue_record(key: bytes | None, value: bytes | None) -> str:
    """"" for a valid catalogue record (or a tombstone with a key), else the reason it is rejected."""
    if not key:
        return "catalogue record without a key (the key must be the item id)"
    if value is None:
        return ""
    try:
        record = orjson.loads(value)
        _validate_item(record)
    except orjson.JSONDecodeError as exc:
        return f"catalogue record is not JSON: {exc}"[:300]
    except ValidationError as exc:
        return f"schema catalogue-item.v1: {exc.message}"[:300]
    if record["item_id"].encode() != key:
        return f"catalogue key {key[:80]!r} is not the record's item_id {record['item_id'][:80]!r}"
    return ""


def catalogue_text(value: bytes | None) -> str:
    """The text of a stored catalogue record ({"item_id", "text"|"title"}); "" when absent or unreadable."""
    if not value:
        return ""
    try:
        record = orjson.loads(value)
        return str(record.get("text") or record.get("title") or "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
