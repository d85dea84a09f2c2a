"""A bounded heavy-hitter summary of recent item activity: which items a scoring step considers.

Weights are decayed event counts (a decay scales one shared factor, not every weight); the summary keeps at
most `capacity` items (it grows to 2x, then keeps the heaviest `capacity`, ties by item id, so memory stays
flat with millions of items and the result does not depend on arrival order within a batch). Pure; no Kafka,
no RocksDB here.
"""

from __future__ import annotations

import numpy as np

_MIN_SCALE = 1e-150   # below this the stored weights are rescaled (a float reaches ~1e-308)


class HeavyHitters:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.weights: dict[str, float] = {}   # an item's weight divided by `scale`
        self.scale = 1.0                      # decay in O(1): it multiplies this, not every weight

    def add(self, items: list[str], counts: list[int] | np.ndarray) -> None:
        weights = self.weights
        per_count = 1.0 / self.scale
        for item, count in zip(items, counts, strict=True):
            weights[item] = weights.get(item, 0.0) + float(count) * per_count
        if len(weights) > 2 * self.capacity:
            self._prune()

    def decay(self, factor: float) -> None:
        """Age every weight (called once per scoring step) so the summary follows recent activity."""
        self.scale *= factor
        if self.scale < _MIN_SCALE:
            self.weights = {item: weight * self.scale for item, weight in self.weights.items()}
            self.scale = 1.0

    def weight(self, item: str) -> float:
        """The item's decayed weight (0.0 for an item not in the summary)."""
        return self.weights.get(item, 0.0) * self.scale

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
