"""When a collection checkpoints, seals and compacts: one object, passed in, never patched.

``shoal.open(path, policy=Policy(...))`` applies a policy to every collection the database
opens; the defaults suit collections of any size. Tests pass tiny thresholds to reach every
state (checkpoints, seals, compactions) with a few hundred rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import InvalidArgumentError


@dataclass(frozen=True)
class Policy:
    """Thresholds of a collection's maintenance, in rows.

    Attributes
    ----------
    seal_rows : the active segment is sealed (kept as it is, a new one started) at this size.
    checkpoint_min_rows, checkpoint_max_rows : a checkpoint runs when the log holds half the
        active segment's rows, but never fewer than the minimum nor more than the maximum (the
        maximum bounds the replay after a crash).
    compact_dead_share, compact_min_rows : compact automatically when this share of the rows
        are deleted or replaced and there are at least ``compact_min_rows`` rows.
    """

    seal_rows: int = 1_000_000
    checkpoint_min_rows: int = 20_000
    checkpoint_max_rows: int = 200_000
    compact_dead_share: float = 1 / 3
    compact_min_rows: int = 10_000

    def __post_init__(self) -> None:
        for name in ("seal_rows", "checkpoint_min_rows", "checkpoint_max_rows", "compact_min_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"Policy.{name} must be a positive int, got {value!r}")
        if not 0 < self.compact_dead_share <= 1:
            raise InvalidArgumentError(
                f"Policy.compact_dead_share must be in (0, 1], got {self.compact_dead_share!r}")
        if self.checkpoint_max_rows < self.checkpoint_min_rows:
            raise InvalidArgumentError("Policy.checkpoint_max_rows must be >= checkpoint_min_rows")

    def checkpoint_due(self, logged_rows: int, active_rows: int) -> bool:
        """Whether the log is long enough to checkpoint (or the active segment full)."""
        due = min(max(self.checkpoint_min_rows, active_rows // 2), self.checkpoint_max_rows)
        return logged_rows >= due or active_rows >= self.seal_rows

    def compaction_due(self, rows: int, dead: int) -> bool:
        return rows >= self.compact_min_rows and dead >= self.compact_dead_share * rows


DEFAULT_POLICY = Policy()
