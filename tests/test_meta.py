"""featstore.meta: new labels, groups and splits for items already in a store, recorded beside the shards."""
import json

import h5py
import numpy as np
from helpers import extract_flags, invoke, write_split_clips

from featstore import StoreWriter, VideoRecord, compact, open_store
from featstore.meta import MetaChange, diff_meta, read_meta_updates, write_meta_update


def labelled_store(path):
    """Items a (label x, group g1, split train), b (y, g2, test) and a failed one, f."""
    with StoreWriter(path, {"backbone": "synthetic"}, ["backbone"], dim=2) as w:
        for vid, label, group, split in (("a", "x", "g1", "train"), ("b", "y", "g2", "test")):
            w.add(VideoRecord(vid, label=label, group=group, split=split, features=np.ones((2, 2), np.float32),
                              frame_index=np.arange(2), time_s=np.arange(2) / 25))
        w.add(VideoRecord("f", label="x", status="failed", error="broken"))
    return path


def test_diff_meta_lists_only_the_columns_that_changed_of_items_the_store_has(tmp_path):
    store = open_store(labelled_store(tmp_path / "s"))
    wanted = {"a": {"label": "z", "group": "g1", "split": "train"}, "b": {"label": "y", "group": "g2"},
              "f": {"split": "test"}, "new": {"label": "x"}}
    changes = diff_meta(store, wanted)
    assert [(c.video_id, c.before, c.after) for c in changes] == [
        ("a", {"label": "x"}, {"label": "z"}), ("f", {"split": ""}, {"split": "test"})]
    assert changes[0].describe() == "a: label 'x' -> 'z'"


def test_updates_apply_in_sequence_over_shards_that_stay_as_extract_wrote_them(tmp_path):
    path = labelled_store(tmp_path / "s")
    shards = {p.name: p.read_bytes() for p in path.glob("p0-*.h5")}
    assert write_meta_update(path, []) is None and not list(path.glob("_meta.*"))
    first = write_meta_update(path, [MetaChange("a", {"label": "x"}, {"label": "z", "split": "val"})])
    second = write_meta_update(path, [MetaChange("a", {"label": "z"}, {"label": "w"}),
                                      MetaChange("b", {"group": "g2"}, {"group": "g9"})])
    assert (first.name, second.name) == ("_meta.000001.h5", "_meta.000002.h5")
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]
    s = open_store(path)
    assert read_meta_updates(path, s.fingerprint) == {"a": {"label": "w", "split": "val"}, "b": {"group": "g9"}}
    assert (s.meta("a").label, s.meta("a").split, s.meta("a").group) == ("w", "val", "g1")
    assert (s.meta("b").label, s.meta("b").group) == ("y", "g9")
    assert {p.name: p.read_bytes() for p in path.glob("p0-*.h5")} == shards
    with h5py.File(second) as f:  # an update names only what it changes
        assert f["label_set"][()].tolist() == [True, False] and f["group_set"][()].tolist() == [False, True]


def test_a_compacted_store_has_its_updates_built_in(tmp_path):
    path = labelled_store(tmp_path / "s")
    write_meta_update(path, [MetaChange("b", {"label": "y"}, {"label": "q"})])
    one = compact(path, tmp_path / "one.h5")
    assert open_store(one).meta("b").label == "q" and read_meta_updates(one, open_store(one).fingerprint) == {}


def test_edited_labels_warn_and_update_meta_records_them_without_re_embedding(tmp_path):
    manifest = write_split_clips(tmp_path, [f"c{i}.mkv" for i in range(6)])
    store = tmp_path / "s"
    extract = ["extract", manifest, *extract_flags(precision="fp32"), "--store", store]
    assert invoke(*extract).exit_code == 0
    shards = sorted(p.name for p in store.glob("p0-*.h5"))
    before = open_store(store).load_all().features
    rows = manifest.read_text().splitlines()
    rows[1] = rows[1].replace(",a,g0,train", ",c,g0,test")   # c0: new label and split
    rows[2] = rows[2].replace(",g1,", ",g9,")                 # c1: new group
    manifest.write_text("\n".join(rows) + "\n")
    res = invoke(*extract)
    assert res.exit_code == 0 and "2 item(s) already in the store have another" in res.output, res.output
    assert "c0: label 'a' -> 'c'" in res.output and "--update-meta" in res.output
    assert open_store(store).meta("c0").label == "a"  # a warning only
    res = invoke("extract", manifest, "--update-meta", "--store", store)
    assert res.exit_code == 0 and "2 item(s) updated" in res.output, res.output
    s = open_store(store)
    assert (s.meta("c0").label, s.meta("c0").split, s.meta("c1").group) == ("c", "test", "g9")
    assert s.meta("c2").label == "a" and s.meta("c0").labels == ["c"]
    assert sorted(p.name for p in store.glob("p0-*.h5")) == shards  # nothing re-embedded
    np.testing.assert_array_equal(s.load_all().features, before)
    again = invoke(*extract)
    assert again.exit_code == 0 and "another" not in again.output
    assert invoke("compact", store, tmp_path / "one.h5").exit_code == 0
    assert open_store(tmp_path / "one.h5").meta("c0").label == "c"
    info = json.loads(invoke("info", store, "--json").stdout)
    assert {i["id"]: i["split"] for i in info["items"]}["c0"] == "test"
