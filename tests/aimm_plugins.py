"""An aimm plugin module for tests/test_aimm_integration.py: a straight line ``y = slope * x + intercept``
as an aimm model (``@aimm.plugins.model``), serialized as JSON. The aimm-server subprocess imports it
through its ``plugins.names``; the test process imports it to talk to the server and to read the store."""

from __future__ import annotations

import json
from typing import Any

from aimm import plugins


@plugins.model
class Line(plugins.Model):  # type: ignore[misc]  # aimm ships no type information
    """``y = slope * x + intercept``; ``fit`` is a least-squares fit."""

    def __init__(self, slope: float = 1.0, intercept: float = 0.0) -> None:
        self.slope = float(slope)
        self.intercept = float(intercept)

    def fit(self, x: list[float], y: list[float]) -> Line:
        n = len(x)
        mx, my = sum(x) / n, sum(y) / n
        sxx = sum((a - mx) ** 2 for a in x)
        self.slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
        self.intercept = my - self.slope * mx
        return self

    def predict(self, x: list[float]) -> list[float]:
        return [self.slope * a + self.intercept for a in x]

    def serialize(self) -> bytes:
        return json.dumps({"slope": self.slope, "intercept": self.intercept}).encode()

    @classmethod
    def deserialize(cls, data: bytes) -> Line:
        return cls(**json.loads(data))

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Line) and (self.slope, self.intercept) == (other.slope, other.intercept)

    def __hash__(self) -> int:
        return hash((self.slope, self.intercept))

    def __repr__(self) -> str:
        return f"Line({self.slope}, {self.intercept})"


LINE = f"{Line.__module__}.{Line.__name__}"
