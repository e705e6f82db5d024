"""Every writer refuses to write over what is not its own (issue 19, rule 1): a user's file or folder, another
store's compacted file, a store's shard or header, a run of another kind. Nothing of theirs changes, the one-line
error names --force; a store's own files stay refused even with it."""
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

from data.synth import make_temporal_dataset
from featstore import StoreWriter, VideoRecord, open_store

pytestmark = pytest.mark.usefixtures("one_thread")  # finetune's tiny backbone gains nothing from a second thread
KEYS = ["backbone", "every"]


def make_store(path: Path, ids: list[str], every: int) -> Path:
    with StoreWriter(path, {"backbone": "resnet18", "every": every}, KEYS, dim=4) as w:
        for i, vid in enumerate(ids):
            w.add(VideoRecord(vid, label="a", features=np.full((2, 4), i, np.float32), frame_index=np.arange(2),
                              time_s=np.arange(2.0)))
    return path


def snapshot(path: Path) -> dict:
    """Every file under `path` (or `path` itself) with its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("own")
    store = make_store(root / "a", ["a0", "a1"], every=10)
    other = make_store(root / "b", ["b0"], every=5)
    assert invoke("compact", other, root / "b.h5").exit_code == 0
    manifest = make_temporal_dataset(root / "clips", n_per_class=2, frames=4, size=16, seed=0)
    return {"root": root, "store": store, "other": other, "manifest": manifest}


def targets(root: Path, other: Path) -> dict:
    """Fresh targets of every kind, built under `root`."""
    root.mkdir()
    (root / "notes.txt").write_text("my notes\n")
    folder = root / "mine"
    folder.mkdir()
    (folder / "index.json").write_text('{"mine": true}\n')
    (folder / "config.json").write_text('{"mine": true}\n')
    run = root / "fit-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"command": "fit-head", "train": {"head": "linear"}}))
    (run / "head.pt").write_bytes(b"weights")
    return {"user file": root / "notes.txt", "user folder": folder, "another store's file": other.parent / "b.h5",
            "a shard": next(other.glob("p0-*.h5")), "a header": other / "_store.h5", "a run of another kind": run}


WRITERS = {
    "compact": lambda w, target: ["compact", w["store"], target],
    "explain": lambda w, target: ["explain", w["root"] / "no-run", w["manifest"], "--out", target],
    "finetune": lambda w, target: ["finetune", w["manifest"], "--backbone", "resnet18", "--weights", "none",
                                   "--out", target],
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_refuses_what_is_not_its_own_and_names_force(world, tmp_path, writer):
    for kind, target in targets(tmp_path / "t", world["other"]).items():
        before = snapshot(target)
        store_before = snapshot(world["other"])
        res = invoke(*WRITERS[writer](world, target))
        assert res.exit_code == 1, (writer, kind, res.output)
        assert "--force" in res.output and "Traceback" not in res.output, (writer, kind, res.output)
        assert snapshot(target) == before and snapshot(world["other"]) == store_before, (writer, kind)


def test_a_stores_shard_and_header_stay_refused_with_force(world):
    for target in (next(world["other"].glob("p0-*.h5")), world["other"] / "_store.h5", world["store"] / "x.h5"):
        before = snapshot(world["other"])
        res = invoke("compact", world["store"], target, "--force")
        assert res.exit_code == 1 and "never written over" in res.output
        assert snapshot(world["other"]) == before and not (world["store"] / "x.h5").exists()


def test_compact_replaces_its_own_compaction_and_force_replaces_another_whole(world, tmp_path):
    out = tmp_path / "a.h5"
    assert invoke("compact", world["store"], out).exit_code == 0
    assert invoke("compact", world["store"], out).exit_code == 0  # a compaction of the same store
    res = invoke("compact", world["other"], out)
    assert res.exit_code == 1 and "another store's file" in res.output and "--force" in res.output
    assert invoke("compact", world["other"], out, "--force").exit_code == 0
    assert open_store(out).ids() == ["b0"]


def test_explain_and_finetune_accept_their_own_earlier_output(world, tmp_path):
    explained = tmp_path / "explained"
    explained.mkdir()
    (explained / "index.json").write_text(json.dumps([{"path": "a.mp4", "png": str(explained / "a.gradcam.png")}]))
    (explained / "a.gradcam.png").write_bytes(b"png")
    res = invoke(*WRITERS["explain"](world, explained))
    assert res.exit_code == 1 and "--force" not in res.output  # past the guard: the run itself is missing
    interrupted = tmp_path / "tuned"
    interrupted.mkdir()
    (interrupted / "checkpoint.pt").write_bytes(b"ckpt")
    res = invoke(*WRITERS["finetune"](world, interrupted))
    assert res.exit_code == 1 and "pass --resume" in res.output


def test_force_replaces_a_folder_only_once_the_inputs_are_checked(world, tmp_path):
    """explain --force over a user's folder with a RUN that does not exist: refused for the run, folder kept."""
    folder = targets(tmp_path / "t", world["other"])["user folder"]
    before = snapshot(folder)
    res = invoke(*WRITERS["explain"](world, folder), "--force")
    assert res.exit_code == 1 and snapshot(folder) == before


def test_finetune_force_replaces_a_folder_of_other_files_whole(world, tmp_path):
    folder = targets(tmp_path / "t", world["other"])["a run of another kind"]
    clips = make_temporal_dataset(tmp_path / "clips", n_per_class=4, frames=6, size=32, seed=2)  # train/val/test
    res = invoke("finetune", clips, "--backbone", "resnet18", "--weights", "none", "--size", "32",
                 "--crop", "none", "--segments", "2", "--precision", "fp32", "--workers", "0", "--batch-size", "4",
                 "--epochs", "1", "--no-probe", "--no-refit", "--out", folder, "--force")
    assert res.exit_code == 0, res.output
    assert (folder / "backbone.pt").exists() and not (folder / "head.pt").exists()  # never a merge of two runs
