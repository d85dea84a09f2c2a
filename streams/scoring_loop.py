"""The scoring step: a partition's rings at a boundary -> its top-K candidates; candidates of every
partition -> one global top-K of explained trend v1 records (the merge step).

The global top-K is exact: an item in it is in its own partition's top-K. Ranking is by forecast, ties
broken by item id, so one worker and many give the same records. Explanations are written only for the
global top-K, in the merge step. Every generated explanation is checked with the faithfulness checker
before it is published (`grounded_explanations`): one that cites a number the signals do not hold, or a
direction other than the forecast's, is replaced by the grounded template, and the record says which it
carries (`explanation_source`). No Kafka I/O here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from models.faithfulness import check_explanation
from models.features import FeatureBatch
from models.scoring import Scorer
from models.windows import WindowSpec, bucket_count_matrix, last_event_slot_matrix
from streams.state import Snapshot


def features_at(
    snapshot: Snapshot, boundary: int, spec: WindowSpec, texts_of: Callable[[list[str]], list[str]] | None
) -> FeatureBatch:
    """FeatureBatch of the items with at least one event in the window ending at `boundary`; their catalogue
    texts when `texts_of` is given (None: "" for every item, for a scorer that does not read texts)."""
    n_items = len(snapshot.item_ids)
    matrix = bucket_count_matrix(snapshot.item_index, snapshot.slots, snapshot.counts, boundary, spec, n_items)
    last_slot = last_event_slot_matrix(snapshot.item_index, snapshot.slots, boundary, n_items)
    active = np.flatnonzero(matrix.sum(axis=1) > 0)
    item_ids = list(map(snapshot.item_ids.__getitem__, active.tolist()))   # numpy scalars index slowly
    return FeatureBatch(item_ids, matrix[active], last_slot[active], boundary, spec,
                        texts=texts_of(item_ids) if texts_of is not None else [])


def top_k_order(item_ids: list[str], forecast: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k best forecasts, highest first, ties by item id."""
    rounded = np.round(np.asarray(forecast, dtype=np.float64), 6)
    if len(rounded) > 4 * k:  # only rows tied with or above the k-th best can make the cut
        kth = np.partition(rounded, len(rounded) - k)[len(rounded) - k]
        rows = np.flatnonzero(rounded >= kth)
    else:
        rows = np.arange(len(rounded))
    order = np.lexsort((np.asarray([item_ids[i] for i in rows]), -rounded[rows]))
    return rows[order[:k]].astype(np.int64)


def partition_candidates(batch: FeatureBatch, forecast: np.ndarray, k: int, model: str,
                         texts_of: Callable[[list[str]], list[str]] | None = None) -> list[dict]:
    """The partition's top-k items with what the merge step needs to rank and explain them; their texts read
    with `texts_of` when the batch was made without them (`features_at(..., texts_of=None)`)."""
    rows = top_k_order(batch.item_ids, forecast, k)
    texts = [batch.texts[i] for i in rows] if texts_of is None else texts_of([batch.item_ids[i] for i in rows])
    return [
        {
            "item_id": batch.item_ids[i],
            "counts": batch.bucket_counts[i].tolist(),
            "last_event_slot": int(batch.last_event_slot[i]),
            "forecast": float(forecast[i]),
            "text": text,
            "model": model,
        }
        for i, text in zip(rows, texts, strict=True)
    ]


def merge_top_k(candidates: list[dict], boundary: int, spec: WindowSpec, k: int):
    """All partitions' candidates -> (their FeatureBatch, forecasts, rows of the global top-k in rank order)."""
    batch = FeatureBatch(
        [c["item_id"] for c in candidates],
        np.asarray([c["counts"] for c in candidates], dtype=np.int64).reshape(-1, spec.n_buckets),
        np.asarray([c["last_event_slot"] for c in candidates], dtype=np.int64),
        boundary, spec, texts=[c.get("text", "") for c in candidates],
    )
    forecast = np.asarray([c["forecast"] for c in candidates], dtype=np.float64)
    return batch, forecast, top_k_order(batch.item_ids, forecast, k)


def grounded_explanations(batch: FeatureBatch, forecast: np.ndarray, chosen: np.ndarray, explanations: list[str],
                          from_model: bool, template: Scorer) -> tuple[list[str], list[str]]:
    """(texts, sources): model explanations that pass `check_explanation` kept ("model"), the others replaced
    by `template`'s grounded explanation ("template"). from_model=False: all are templates already."""
    if not from_model:
        return list(explanations), ["template"] * len(explanations)
    failing = [j for j, (i, text) in enumerate(zip(chosen, explanations, strict=True))
               if not check_explanation(text, batch.signals_of(int(i)), float(forecast[i]),
                                        float(batch.signals["last_count"][i]), batch.texts[i])[0]]
    texts, sources = list(explanations), ["model"] * len(explanations)
    if failing:
        replacements = template.explain(batch, forecast, np.asarray(chosen)[failing])
        for j, text in zip(failing, replacements, strict=True):
            texts[j], sources[j] = text, "template"
    return texts, sources


def trend_records(
    batch: FeatureBatch, forecast: np.ndarray, chosen: np.ndarray, explanations: list[str], model: dict,
    sources: list[str] | None = None,
) -> list[dict]:
    """Trend v1 records of the chosen rows, ranked in the given order."""
    spec = batch.spec
    end_ms = spec.boundary_ms(batch.boundary_slot)
    window = {"start": end_ms - spec.window_slots * spec.slot_ms, "end": end_ms,
              "slot_s": spec.slot_s, "bucket_s": spec.bucket_s}
    now_ms = int(time.time() * 1000)
    records = []
    for rank, (i, explanation) in enumerate(zip(chosen, explanations, strict=True), start=1):
        record = {
            "item_id": batch.item_ids[i],
            "rank": rank,
            "score": round(float(forecast[i]), 6),
            "predicted_count": round(max(0.0, float(forecast[i])), 6),
            "window": window,
            "recent_counts": batch.bucket_counts[i].tolist(),
            "explanation": explanation,
            "signals": batch.signals_of(int(i)),
            "model": model,
            "generated_at": now_ms,
        }
        if batch.texts[i]:
            record["title"] = batch.texts[i]
        if sources is not None:
            record["explanation_source"] = sources[rank - 1]
        records.append(record)
    return records
