"""Scale-out: one job across several processes (shards), one lease, the same exactly-once contract.

- `plan`: the shard plan (`ShardPlan`, `Shard`, `ShardReader`), made once by the driver and kept
  in `<output>.batchrun/shards.json`;
- `worker`: the process that runs shards (batchrun's own runner over a `ShardReader`);
- `driver`: `arun_sharded`, which holds the endpoint, hands shards to workers, stops them, and
  merges their outputs in shard order.
"""

from __future__ import annotations

from batchrun.shards.plan import Shard, ShardPlan, ShardReader, make_plan

__all__ = ["Shard", "ShardPlan", "ShardReader", "make_plan"]
