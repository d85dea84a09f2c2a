"""A bounded heavy-hitter summary of recent item activity: which items a scoring step considers.

Weights are decayed event counts; the summary keeps at most `capacity` items (it grows to 2x, then
keeps the heaviest `capacity`, ties by item id, so memory stays flat with millions of items and the
result does not depend on arrival order within a batch). Pure; no Kafka, no RocksDB here.
"""

from __future__ import annotations

import numpy as np


class HeavyHitters:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.weights: dict[str, float] = {}

    def add(self, items: list[str], counts: list[int] | np.ndarray) -> None:
        weights = self.weights
        for item, count in zip(items, counts, strict=True):
            weights[item] = weights.get(item, 0.0) + float(count)
        if len(weights) > 2 * self.capacity:
            self._prune()

    def decay(self, factor: float) -> None:
        """Age every weight (called once per scoring step) so the summary follows recent activity."""
        self.weights = {item: weight * factor for item, weight in self.weights.items()}

    def _prune(self) -> None:
        names = np.asarray(list(self.weights), dtype=object)
        values = np.fromiter(self.weights.values(), dtype=np.float64, count=len(names))
        keep = np.lexsort((names.astype(str), -values))[: self.capacity]
        self.weights = {names[i]: float(values[i]) for i in keep}

    def candidates(self) -> list[str]:
        """The (at most capacity) heaviest items, sorted by id for a deterministic scan order."""
        if len(self.weights) > self.capacity:
            self._prune()
        return sorted(self.weights)

    def __len__(self) -> int:
        return len(self.weights)
