"""Search results: ranked hits with their metadata, as a table or JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Hit:
    """One gallery logit returned by a search.

    Attributes:
        rank: 1 for the best hit.
        score: the ProbeLog discrepancy to the query (lower is closer).
        zoo: name of the zoo the model came from.
        model_id: the model's id.
        logit: output index within the model.
        class_name: the class that output was trained for, when known.
        index: the row of this logit in the gallery.
    """

    rank: int
    score: float
    zoo: str
    model_id: str
    logit: int
    class_name: str | None
    index: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The ranked hits of one query.

    Example:
        >>> r = SearchResult("text:'sandal'", (Hit(1, 0.5, "hub", "m1", 5, "Sandal", 15),))
        >>> print(r.to_table())
        query: text:'sandal'
        rank   score  zoo  model  logit  class
           1  0.5000  hub  m1         5  Sandal
        >>> r.to_json()
        '{"query": "text:\\'sandal\\'", "hits": [{"rank": 1, "score": 0.5, "zoo": "hub", "model_id": "m1", ...}]}'
    """

    query: str
    hits: tuple[Hit, ...]

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]

    @property
    def class_names(self) -> list[str | None]:
        return [h.class_name for h in self.hits]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "hits": [h.to_dict() for h in self.hits]}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def to_table(self) -> str:
        """A fixed-width table (rank, score, zoo, model, logit, class)."""
        head = ("rank", "score", "zoo", "model", "logit", "class")
        rows = [
            (str(h.rank), f"{h.score:.4f}", h.zoo, h.model_id, str(h.logit), h.class_name or "?") for h in self.hits
        ]
        widths = [max(len(head[c]), *(len(r[c]) for r in rows)) if rows else len(head[c]) for c in range(6)]
        right = {0, 1, 4}

        def fmt(r: tuple[str, ...]) -> str:
            cells = [r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c]) for c in range(6)]
            return "  ".join(cells).rstrip()

        return "\n".join([f"query: {self.query}", fmt(head), *(fmt(r) for r in rows)])
