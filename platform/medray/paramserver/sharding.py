"""Which parameter server holds which embedding row: rows sharded by a hash of their index.

Pure numpy, no Ray. A multiplicative (Fibonacci) hash spreads consecutive and clustered row ids
(hashed feature buckets, popular codes) evenly over the shards, so no server holds all the hot rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medray.errors import ConfigError

__all__ = ["ShardMap", "shard_of"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio (Knuth, TAOCP vol. 3, 6.4)


def shard_of(rows: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each row index: the top 32 bits of ``row * 2**64/phi`` modulo ``shards``."""
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards!r}")
    mixed = (np.asarray(rows, dtype=np.uint64) * _GOLDEN) >> np.uint64(32)
    return (mixed % np.uint64(shards)).astype(np.int64)


@dataclass(frozen=True)
class ShardMap:
    """The owner shard and the index within that shard of every row of one table."""

    rows: int
    shards: int
    owner: np.ndarray  # int64 [rows]
    local: np.ndarray  # int64 [rows]: position among the owner's rows, in row order

    @classmethod
    def build(cls, rows: int, shards: int) -> ShardMap:
        if rows < 1:
            raise ConfigError(f"a table needs >= 1 row, got {rows!r}")
        owner = shard_of(np.arange(rows), shards)
        local = np.empty(rows, dtype=np.int64)
        for s in range(shards):
            mine = owner == s
            local[mine] = np.arange(int(mine.sum()))
        return cls(rows=rows, shards=shards, owner=owner, local=local)

    def rows_of(self, shard: int) -> np.ndarray:
        """The global row indices shard ``shard`` holds, in its local order."""
        return np.flatnonzero(self.owner == shard)

    def split(self, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per shard: (positions into ``ids``, local row indices there) of the ids it holds."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise ConfigError(f"row ids must be within [0, {self.rows}), got {ids.min()}..{ids.max()}")
        owner = self.owner[ids]
        return [(pos, self.local[ids[pos]]) for pos in (np.flatnonzero(owner == s) for s in range(self.shards))]
