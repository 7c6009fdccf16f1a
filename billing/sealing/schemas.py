"""Plain results of sealing and verification (no ORM objects cross the package boundary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class SealResult:
    """One sealed batch: the rows of `stream` whose (xid, id) lies in [(xid_from, first_id), (xid_to, last_id)]."""

    stream: str
    seq: int
    n_rows: int
    xid_from: str
    first_id: int
    xid_to: str
    last_id: int
    batch_root: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class RowChange:
    """A sealed row that no longer matches its leaf (`modified`), is gone (`deleted`), or a row placed inside the
    sealed range that no seal covers (`inserted`)."""

    stream: str
    kind: str
    id: int


@dataclass(frozen=True, slots=True)
class SealProblem:
    """A seal whose chain link, hash, batch root, row count or order does not hold, or that disagrees with an
    anchored (exported) digest."""

    stream: str
    seq: int | None
    problem: str


@dataclass(slots=True)
class VerifyReport:
    seals: dict[str, int] = field(default_factory=dict)  # seals checked per stream
    rows: dict[str, int] = field(default_factory=dict)  # sealed rows (leaves) checked per stream
    changes: list[RowChange] = field(default_factory=list)  # at most `limit` per stream and kind
    change_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # stream -> kind -> exact count
    seal_problems: list[SealProblem] = field(default_factory=list)
    anchors_checked: int = 0

    @property
    def intact(self) -> bool:
        return not self.seal_problems and not any(n for kinds in self.change_counts.values() for n in kinds.values())

    def ids(self, stream: str, kind: str) -> list[int]:
        return [c.id for c in self.changes if c.stream == stream and c.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "seals": self.seals,
            "rows": self.rows,
            "anchors_checked": self.anchors_checked,
            "change_counts": self.change_counts,
            "changes": {
                stream: {kind: self.ids(stream, kind) for kind in kinds} for stream, kinds in self.change_counts.items()
            },
            "seal_problems": [{"stream": p.stream, "seq": p.seq, "problem": p.problem} for p in self.seal_problems],
        }


@dataclass(frozen=True, slots=True)
class StreamDigest:
    stream: str
    seq: int
    hash: str  # hex
    xid_to: str
    last_id: int
    sealed_at: datetime
    seals: int
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "hash": self.hash,
            "xid_to": self.xid_to,
            "last_id": self.last_id,
            "sealed_at": self.sealed_at.isoformat(),
            "seals": self.seals,
            "rows": self.rows,
        }
