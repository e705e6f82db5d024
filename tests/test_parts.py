"""info on sharded stores: which --shard parts have written anything and how many items each holds."""
import json

import numpy as np
from helpers import invoke

from featstore import StoreWriter, VideoRecord, open_store
from featstore.parts import parts_without_shards, store_parts

KEYS = ["backbone"]
CFG = {"backbone": "resnet18"}


def write_part(store, prefix: str, ids: list[str], failed: tuple[str, ...] = (), flush: int = 2) -> None:
    with StoreWriter(store, CFG, KEYS, dim=4, prefix=prefix, flush_videos=flush) as w:
        for vid in ids:
            if vid in failed:
                w.add(VideoRecord(vid, status="failed", error="broken"))
            else:
                w.add(VideoRecord(vid, features=np.ones((2, 4), np.float32), frame_index=np.arange(2),
                                  time_s=np.arange(2) * 0.1))


def test_parts_count_shards_and_items_and_name_the_parts_that_wrote_nothing(tmp_path):
    store = tmp_path / "s"
    write_part(store, "s0of3", ["a", "b", "c"], failed=("c",))   # 2 shards
    write_part(store, "s2of3", ["d"])
    parts = store_parts(open_store(store))
    assert [(p.prefix, p.index, p.count, p.shards, p.items, p.ok, p.failed) for p in parts] == [
        ("s0of3", 0, 3, 2, 3, 2, 1), ("s2of3", 2, 3, 1, 1, 1, 0)]
    assert parts_without_shards(parts) == {3: [1]}

    res = invoke("info", store)
    assert res.exit_code == 0 and "1 of 3 parts have written nothing: 1" in res.stdout
    summary = json.loads(invoke("info", store, "--json").stdout)
    assert summary["parts_without_shards"] == {"3": [1]}
    assert {p["prefix"]: p["items"] for p in summary["parts"]} == {"s0of3": 3, "s2of3": 1}


def test_a_retried_item_counts_once_in_the_part_holding_its_current_record(tmp_path):
    store = tmp_path / "s"
    write_part(store, "s0of2", ["a", "b"], failed=("b",))
    write_part(store, "s1of2", ["c"])
    write_part(store, "s0of2", ["b"])  # --retry-failed wrote b again, ok this time
    parts = {p.prefix: p for p in store_parts(open_store(store))}
    assert (parts["s0of2"].items, parts["s0of2"].ok, parts["s0of2"].failed) == (2, 2, 0)
    assert parts_without_shards(list(parts.values())) == {2: []}
    res = invoke("info", store)
    assert "all 2 parts have written shards" in res.stdout


def test_an_unsharded_store_shows_no_parts_table(tmp_path):
    write_part(tmp_path / "s", "p0", ["a"])
    res = invoke("info", tmp_path / "s")
    assert res.exit_code == 0 and "parts" not in res.stdout
