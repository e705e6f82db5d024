"""pipeline.sources: manifests, folder layouts, UCF101 / HMDB51 split files, sharding, and subsets (--classes,
--classes-file, --per-class)."""
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import extract_flags, invoke, write_manifest

from featstore import open_store
from pipeline.sources import Item, SourceError, Subset, load_source, read_classes, select_items, shard_items


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- manifest ---------------------------------------------------------------------------------------------------


def test_manifest_resolves_relative_paths_against_its_own_folder(tmp_path, place, monkeypatch):
    place(tmp_path / "data" / "clips" / "a.mp4")
    manifest = write(tmp_path / "data" / "m.csv", f"path,label\nclips/a.mp4,run\n{tmp_path}/elsewhere/b.avi,\n")
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    a, b = load_source(manifest)
    assert a == Item(id="clips/a", path=str(tmp_path / "data" / "clips" / "a.mp4"), labels=("run",))
    # A row outside the manifest's folder keeps its absolute path; a missing file is not an error here.
    assert (b.path, b.labels, b.id) == (str(tmp_path / "elsewhere" / "b.avi"), (), f"{tmp_path}/elsewhere/b")


def test_manifest_reads_multi_label_ids_groups_splits_and_image_kind(tmp_path):
    manifest = write(tmp_path / "m.csv", "id,path,label,group,split\n"
                                         "x1,v/1.mp4,walk|talk,g1,train\n"
                                         ",v/2.JPG, sit ,g2,test\n")
    first, second = load_source(manifest)
    assert first.labels == ("walk", "talk") and first.label == "walk|talk"
    assert (first.id, first.group, first.split, first.kind) == ("x1", "g1", "train", "video")
    assert (second.id, second.labels, second.kind) == ("v/2", ("sit",), "image")


def test_manifest_keeps_its_row_order(tmp_path):
    manifest = write(tmp_path / "m.csv", "path\nz.mp4\na.mp4\nm.mp4\n")
    assert [i.id for i in load_source(manifest)] == ["z", "a", "m"]


def test_manifest_without_path_column_names_the_columns_it_found(tmp_path):
    manifest = write(tmp_path / "m.csv", "file,label\na.mp4,x\n")
    with pytest.raises(SourceError, match=r"'path'.*\['file', 'label'\]"):
        load_source(manifest)


def test_manifest_duplicate_ids_are_listed(tmp_path):
    manifest = write(tmp_path / "m.csv", "path\nx/a.mp4\nx/a.avi\ny/b.mp4\ny/b.mkv\nc.mp4\n")
    with pytest.raises(SourceError) as err:
        load_source(manifest)
    assert "'x/a'" in str(err.value) and "'y/b'" in str(err.value) and "'c'" not in str(err.value)


@pytest.mark.parametrize("text, message", [("path,label\n", "no rows"), ("path,label\n,x\n", "line 2")])
def test_manifest_without_usable_rows_is_refused(tmp_path, text, message):
    with pytest.raises(SourceError, match=message):
        load_source(write(tmp_path / "m.csv", text))


def test_manifest_that_is_not_utf8_text_is_refused_clearly(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label\ncafé.mp4,x\n".encode("latin-1"))
    with pytest.raises(SourceError, match="UTF-8"):
        load_source(manifest)


# --- folders and single files ----------------------------------------------------------------------------------


def test_folder_per_class_labels_by_subfolder_sorted_with_ucf_groups(tmp_path, place, images):
    place(tmp_path / "Run" / "v_Run_g02_c01.mp4", tmp_path / "Jump" / "b.MKV", tmp_path / "Jump" / "a.avi")
    write(tmp_path / "Jump" / "notes.txt", "not media")
    place(tmp_path / ".cache" / "Hidden" / "x.mp4")
    items = load_source(tmp_path)
    assert [(i.id, i.labels, i.group) for i in items] == [
        ("Jump/a", ("Jump",), ""), ("Jump/b", ("Jump",), ""), ("Run/v_Run_g02_c01", ("Run",), "Run_g02")]
    assert all(i.kind == "video" and Path(i.path).is_file() for i in items)


def test_folder_per_class_of_images_gives_image_items(images):
    items = load_source(images)
    assert {i.labels for i in items} == {("disc",), ("square",)}
    assert {i.kind for i in items} == {"image"} and {Path(i.path).suffix for i in items} == {".jpg", ".png"}


def test_class_folders_may_sit_one_level_down(tmp_path, place):
    place(tmp_path / "videos" / "Archery" / "v_Archery_g01_c01.mp4")
    (item,) = load_source(tmp_path)
    assert (item.id, item.labels, item.group) == ("videos/Archery/v_Archery_g01_c01", ("Archery",), "Archery_g01")


def test_flat_folder_gives_unlabeled_items(tmp_path, place):
    place(tmp_path / "b.mp4", tmp_path / "a.webm")
    assert [(i.id, i.labels) for i in load_source(tmp_path)] == [("a", ()), ("b", ())]


def test_folder_mixing_top_level_files_and_class_folders_is_refused(tmp_path, place):
    place(tmp_path / "loose.mp4", tmp_path / "Run" / "a.mp4")
    with pytest.raises(SourceError, match="top level"):
        load_source(tmp_path)


def test_folder_with_same_name_in_two_formats_reports_duplicate_ids(tmp_path, place):
    place(tmp_path / "Run" / "a.mp4", tmp_path / "Run" / "a.avi")
    with pytest.raises(SourceError, match="'Run/a'"):
        load_source(tmp_path)


def test_empty_folder_and_missing_source_are_refused(tmp_path):
    write(tmp_path / "empty" / "readme.txt", "no videos here")
    with pytest.raises(SourceError, match="no video or image files"):
        load_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="does not exist"):
        load_source(tmp_path / "nope")


def test_single_file_is_one_item_and_unknown_files_are_refused(tmp_path, place):
    place(tmp_path / "v_Jump_g03_c02.mp4")
    assert load_source(tmp_path / "v_Jump_g03_c02.mp4") == [
        Item(id="v_Jump_g03_c02", path=str(tmp_path / "v_Jump_g03_c02.mp4"), labels=(), group="Jump_g03")]
    with pytest.raises(SourceError, match="neither a manifest"):
        load_source(write(tmp_path / "notes.txt", "x"))


# --- UCF101 -----------------------------------------------------------------------------------------------------


def _ucf_root(root: Path, place, lists_dir: str = "ucfTrainTestlist") -> Path:
    lists = root / lists_dir if lists_dir else root
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 Archery\r\n")
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g09_c02.avi 2\n")
    write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nArchery/v_Archery_g02_c03.avi\n")
    write(lists / "trainlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
    write(lists / "testlist02.txt", "Archery/v_Archery_g09_c02.avi\n")
    place(root / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi",
          root / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi",
          root / "UCF-101" / "Archery" / "v_Archery_g09_c02.mp4")  # re-encoded copy: found by name stem
    return root


def test_ucf101_root_reads_the_official_split_with_groups(tmp_path, place):
    items = {i.id: i for i in load_source(_ucf_root(tmp_path, place), split_id=1)}
    assert sorted(items) == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01",
                             "Archery/v_Archery_g02_c03", "Archery/v_Archery_g09_c02"]
    eye = items["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"]
    assert (eye.labels, eye.group, eye.split) == (("ApplyEyeMakeup",), "ApplyEyeMakeup_g08", "train")
    assert eye.path == str(tmp_path / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi")
    assert items["Archery/v_Archery_g09_c02"].path.endswith("UCF-101/Archery/v_Archery_g09_c02.mp4")
    missing = items["Archery/v_Archery_g02_c03"]  # listed but absent: kept, fails later at extract time
    assert (missing.split, missing.path) == ("test", str(tmp_path / "Archery" / "v_Archery_g02_c03.avi"))


def test_ucf101_split_id_chooses_the_lists(tmp_path, place):
    items = load_source(_ucf_root(tmp_path, place, lists_dir=""), split_id=2)
    assert [(i.id, i.split) for i in items] == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", "train"),
                                                ("Archery/v_Archery_g09_c02", "test")]


def test_ucf101_missing_split_lists_the_available_ones(tmp_path, place):
    with pytest.raises(SourceError, match=r"split 3 .*\[1, 2\]"):
        load_source(_ucf_root(tmp_path, place), split_id=3)


# --- HMDB51 -----------------------------------------------------------------------------------------------------


def _hmdb_root(root: Path, place) -> Path:
    splits = root / "testTrainMulti_7030_splits"
    write(splits / "brush_hair_test_split1.txt",
          "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
          "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 2 \n"
          "brushing_hair_brush_hair_h_cm_np1_le_goo_1.avi 0 \n")
    write(splits / "brush_hair_test_split2.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2\n")
    write(splits / "kick_ball_test_split1.txt", "Goal_kick_ball_f_cm_np1_ba_med_3.avi 2\n")
    place(root / "hmdb51_org" / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
          root / "kick_ball" / "Goal_kick_ball_f_cm_np1_ba_med_3.avi")
    return root


def test_hmdb51_split_codes_give_train_test_and_exclusion(tmp_path, place):
    items = load_source(_hmdb_root(tmp_path, place), split_id=1)
    assert [(i.id, i.labels, i.split, i.group) for i in items] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", ("brush_hair",), "train", "April_09"),
        ("brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0", ("brush_hair",), "test",
         "Blonde_being_brushed"),
        ("kick_ball/Goal_kick_ball_f_cm_np1_ba_med_3", ("kick_ball",), "test", "Goal"),
    ]
    assert items[0].path == str(tmp_path / "hmdb51_org" / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi")
    assert items[2].path == str(tmp_path / "kick_ball" / "Goal_kick_ball_f_cm_np1_ba_med_3.avi")


def test_hmdb51_split_id_chooses_the_split_files(tmp_path, place):
    items = load_source(_hmdb_root(tmp_path, place), split_id=2)
    assert [(i.id, i.split) for i in items] == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", "test")]


def test_hmdb51_bad_code_names_the_file_and_line(tmp_path, place):
    root = _hmdb_root(tmp_path, place)
    write(root / "testTrainMulti_7030_splits" / "kick_ball_test_split1.txt", "a.avi 1\nb.avi 7\n")
    with pytest.raises(SourceError, match=r"kick_ball_test_split1.txt, line 2"):
        load_source(root)


# --- sharding ---------------------------------------------------------------------------------------------------


def _items(n: int) -> list[Item]:
    return [Item(id=f"class{i % 7}/clip{i:04d}", path=f"/v/{i}.mp4", labels=()) for i in range(n)]


def test_shards_are_disjoint_complete_and_keep_order():
    items = _items(300)
    shards = [shard_items(items, i, 3) for i in range(3)]
    ids = [item.id for shard in shards for item in shard]
    assert sorted(ids) == sorted(item.id for item in items) and len(ids) == len(set(ids))
    assert all(len(shard) > 60 for shard in shards)  # a hash, not a range: roughly even
    assert all(shard == sorted(shard, key=items.index) for shard in shards)
    assert shard_items(items, 0, 1) == items


def test_shards_do_not_depend_on_the_python_hash_seed():
    code = ("from pipeline.sources import Item, shard_items; "
            "print([i.id for i in shard_items([Item(id=str(k), path='', labels=()) for k in range(40)], 1, 4)])")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).parents[1]).stdout
            for seed in ("1", "2")}
    assert len(runs) == 1 and runs.pop().startswith("['")


@pytest.mark.parametrize("index, count", [(3, 3), (-1, 2), (0, 0)])
def test_bad_shard_is_refused_naming_the_flag(index, count):
    with pytest.raises(ValueError, match="--shard"):
        shard_items(_items(5), index, count)


# --- the synthetic dataset as a source --------------------------------------------------------------------------


def test_synthetic_dataset_reads_the_same_as_manifest_and_as_folder(temporal_dataset):
    by_manifest = sorted(load_source(temporal_dataset), key=lambda i: i.id)
    by_folder = load_source(temporal_dataset.parent)
    assert [(i.id, i.labels, i.group) for i in by_manifest] == [(i.id, i.labels, i.group) for i in by_folder]
    assert {i.label for i in by_manifest} == {"grow", "shrink", "brighten", "darken"}
    split_of_group = {}
    for item in by_manifest:
        assert split_of_group.setdefault(item.group, item.split) == item.split  # a group never spans splits
    assert set(split_of_group.values()) == {"train", "test"}


# --- subsets ----------------------------------------------------------------------------------------------------


def class_manifest(tmp_path, n_classes=4, groups=5, per_group=3):
    """Rows only (no files): n_classes classes of `groups` groups of per_group items, groups 0 and 1 in test."""
    rows = [(f"v/c{c}_g{g}_{i}.mp4", f"class{c}", f"class{c}_g{g}", "test" if g < 2 else "train")
            for c in range(n_classes) for g in range(groups) for i in range(per_group)]
    return write_manifest(tmp_path, rows, ["path", "label", "group", "split"])


def test_classes_keep_only_those_classes_in_source_order(tmp_path):
    items = load_source(class_manifest(tmp_path), subset=Subset(("class2", "class0")))
    assert {i.labels[0] for i in items} == {"class0", "class2"}
    full = [i.id for i in load_source(class_manifest(tmp_path)) if i.labels[0] in ("class0", "class2")]
    assert [i.id for i in items] == full


def test_per_class_takes_whole_groups_deterministically_and_mixes_splits(tmp_path):
    subset = Subset(per_class=7)
    items = load_source(class_manifest(tmp_path, groups=10), subset=subset)
    again = load_source(class_manifest(tmp_path, groups=10), subset=subset)
    assert [i.id for i in items] == [i.id for i in again]
    counts = Counter(i.labels[0] for i in items)
    assert set(counts.values()) == {6}  # groups of 3: 6 fits in 7, a third group would overflow
    per_group = Counter(i.group for i in items)
    assert set(per_group.values()) == {3}  # never a partial group
    assert {i.split for i in items} == {"train", "test"} or len(items) == 0  # hash order, not g0, g1 first


def test_per_class_keeps_a_class_whose_first_group_is_larger_than_n(tmp_path):
    items = load_source(class_manifest(tmp_path, per_group=3), subset=Subset(per_class=1))
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
        load_source(class_manifest(tmp_path), subset=Subset(("class0", "clas1")))


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
        assert a.config.subset == {"classes": [labels[0]], "per_class": 2}
        assert {m.label for m in a.items()} == {labels[0]} and len(a) < 6  # whole groups of 6
        assert a.fingerprint == b.fingerprint  # same features, different items
    # appending another subset to a store would make its record wrong
    res = invoke(*args, "--classes", labels[1], "--store", tmp_path / "a")
    assert res.exit_code == 1 and "holds the subset" in res.output


@pytest.mark.parametrize("flags, message", [(["--classes", "nope"], "unknown class 'nope'"),
                                            (["--per-class", "0"], "--per-class 0 must be at least 1")])
def test_extract_bad_subset_is_one_line_exit_1(tmp_path, temporal_dataset, flags, message):
    res = invoke("extract", temporal_dataset, *EXTRACT, *flags, "--store", tmp_path / "s")
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
