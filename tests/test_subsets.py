"""Subsets at the source: --classes / --classes-file / --per-class on manifests, class folders and UCF101 roots."""
from collections import Counter

import pytest
from helpers import extract_flags, invoke, write_manifest

from featstore import open_store
from pipeline.sources import SourceError, Subset, load_source, read_classes, select_items


def manifest(tmp_path, n_classes=4, groups=5, per_group=3):
    rows = [(f"v/c{c}_g{g}_{i}.mp4", f"class{c}", f"class{c}_g{g}", "test" if g < 2 else "train")
            for c in range(n_classes) for g in range(groups) for i in range(per_group)]
    return write_manifest(tmp_path, rows, ["path", "label", "group", "split"])


def test_classes_keep_only_those_classes_in_source_order(tmp_path):
    items = load_source(manifest(tmp_path), subset=Subset(("class2", "class0")))
    assert {i.labels[0] for i in items} == {"class0", "class2"}
    full = [i.id for i in load_source(manifest(tmp_path)) if i.labels[0] in ("class0", "class2")]
    assert [i.id for i in items] == full


def test_per_class_takes_whole_groups_deterministically_and_mixes_splits(tmp_path):
    subset = Subset(per_class=7)
    items = load_source(manifest(tmp_path, groups=10), subset=subset)
    again = load_source(manifest(tmp_path, groups=10), subset=subset)
    assert [i.id for i in items] == [i.id for i in again]
    counts = Counter(i.labels[0] for i in items)
    assert set(counts.values()) == {6}  # groups of 3: 6 fits in 7, a third group would overflow
    per_group = Counter(i.group for i in items)
    assert set(per_group.values()) == {3}  # never a partial group
    assert {i.split for i in items} == {"train", "test"} or len(items) == 0  # hash order, not g0, g1 first


def test_per_class_keeps_a_class_whose_first_group_is_larger_than_n(tmp_path):
    items = load_source(manifest(tmp_path, per_group=3), subset=Subset(per_class=1))
    assert Counter(i.labels[0] for i in items) == {f"class{c}": 3 for c in range(4)}


def test_items_without_groups_are_their_own_group(tmp_path):
    for c in ("a", "b"):
        for i in range(5):
            (tmp_path / c).mkdir(exist_ok=True)
            (tmp_path / c / f"x{i}.mp4").write_bytes(b"")
    items = load_source(tmp_path, subset=Subset(("b",), per_class=2))
    assert len(items) == 2 and all(i.labels == ("b",) for i in items)


def test_multilabel_items_keep_only_chosen_labels():
    from pipeline.sources import Item

    items = [Item("1", "/1.mp4", ("walk", "talk")), Item("2", "/2.mp4", ("sit",)), Item("3", "/3.mp4", ("talk",))]
    kept = select_items(items, Subset(("talk", "sit")))
    assert [(i.id, i.labels) for i in kept] == [("1", ("talk",)), ("2", ("sit",)), ("3", ("talk",))]


def test_unknown_class_names_the_valid_ones_and_a_close_match(tmp_path):
    with pytest.raises(SourceError, match=r"unknown class 'clas1'.*did you mean class1.*class0, class1, class2"):
        load_source(manifest(tmp_path), subset=Subset(("class0", "clas1")))


def test_per_class_zero_is_refused():
    with pytest.raises(SourceError, match="--per-class 0 must be at least 1"):
        Subset(per_class=0)


def test_classes_file_and_list_merge_without_duplicates(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my ten\nclass1\nclass2, class3\n\n")
    assert read_classes("class0,class1", f) == ("class0", "class1", "class2", "class3")
    with pytest.raises(SourceError, match="does not exist"):
        read_classes(None, tmp_path / "nope.txt")


EXTRACT = extract_flags(every=4)


def test_extract_records_the_subset_in_the_config_but_not_the_fingerprint(tmp_path, temporal_dataset):
    labels = sorted({i.labels[0] for i in load_source(temporal_dataset)})
    args = ["extract", temporal_dataset, *EXTRACT]
    res = invoke(*args, "--classes", labels[0], "--per-class", "2", "--store", tmp_path / "a")
    assert res.exit_code == 0, res.output
    res = invoke(*args, "--classes", labels[1], "--store", tmp_path / "b")
    assert res.exit_code == 0, res.output
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        assert a.config["subset"] == {"classes": [labels[0]], "per_class": 2}
        assert {m["label"] for m in a.items()} == {labels[0]} and len(a) < 6  # whole groups of 6
        assert a.fingerprint == b.fingerprint  # same features, different items
    # appending another subset to a store would make its record wrong
    res = invoke(*args, "--classes", labels[1], "--store", tmp_path / "a")
    assert res.exit_code == 1 and "holds the subset" in res.output


@pytest.mark.parametrize("flags, message", [(["--classes", "nope"], "unknown class 'nope'"),
                                            (["--per-class", "0"], "--per-class 0 must be at least 1")])
def test_extract_bad_subset_is_one_line_exit_1(tmp_path, temporal_dataset, flags, message):
    res = invoke("extract", temporal_dataset, *EXTRACT, *flags, "--store", tmp_path / "s")
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
