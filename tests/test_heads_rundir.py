"""heads.rundir: every stage-two writer, called from Python (no CLI), guards its output folder the same way."""
import json
import subprocess
import sys

import pytest
from test_heads_train import SMALL, blob_clips, one_thread, write_store  # noqa: F401 (autouse fixture)

import heads
from featstore.staging import HOST
from heads.models import HeadError

FAST = {**SMALL, "epochs": 2, "patience": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("owners")
    clips = blob_clips(per_class=8)
    a = write_store(root / "a", clips)
    b = write_store(root / "b", clips)  # the same settings: one trunk over a and b
    c = write_store(root / "c", clips, {"backbone": "other", "every": 1})  # the same videos, other features
    cfg = heads.TrainConfig(head="linear", **FAST)
    heads.fit(a, cfg, root / "lin")
    heads.fit(a, heads.TrainConfig(head="mlp", **FAST), root / "mlp")
    return root, a, b, c, cfg


WRITERS = {  # kind: how to write a run of that kind into `out`
    "fit-head": lambda i, out, force: heads.fit(i[1], i[4], out, force=force),
    "fit-head --seeds": lambda i, out, force: heads.fit(i[1], i[4], out, seeds=2, force=force),
    "fit-head --folds": lambda i, out, force: heads.fit(i[1], i[4], out, folds=2, force=force),
    "fit-head (stores)": lambda i, out, force: heads.fit([i[1], i[2]], i[4], out, force=force),
    "fit-head --fuse": lambda i, out, force: heads.fit([i[1], i[3]], i[4], out, fuse="concat", force=force),
    "sweep": lambda i, out, force: heads.sweep(i[1], i[4], {"lr": [1e-3, 3e-3]}, out, force=force),
    "fuse": lambda i, out, force: heads.fuse_runs([i[0] / "lin", i[0] / "mlp"], out, force=force),
    "cluster-eval": lambda i, out, force: heads.cluster_eval(i[1], heads.ClusterConfig(plot="none"), out,
                                                             force=force),
}
# a run of another kind than the writer's (its config.json is how a run says what it is): a single fit-head run
# must not take a --seeds run's files beside its head.pt (issue 19), nor a cluster-eval run a fit-head run's
CLUSTER_RUN = {"config.json": json.dumps({"command": "cluster-eval", "k": 3}), "metrics.json": '{"kind": "cluster"}'}
FIT_RUN = {"config.json": json.dumps({"command": "fit-head", "train": {}}), "metrics.json": '{"test": {}}'}
FOLDER = {"user file": {"notes.txt": "keep me"}, "empty": {}, "absent": None}


@pytest.mark.parametrize("state", ["user file", "run of another kind", "empty", "absent", "user file, --force"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_refuses_what_is_not_its_own_and_replaces_it_whole_with_force(inputs, tmp_path, writer, state):
    out = tmp_path / "out"
    writes_a_single_run = writer in ("fit-head", "fit-head (stores)", "fit-head --fuse")
    before = (CLUSTER_RUN if writes_a_single_run else FIT_RUN) if state == "run of another kind" else \
        FOLDER.get(state.split(",")[0])
    if before is not None:
        out.mkdir()
        for name, text in before.items():
            (out / name).write_text(text)
    if state in ("user file", "run of another kind"):
        with pytest.raises(HeadError, match="--force") as e:
            WRITERS[writer](inputs, out, False)
        assert "\n" not in str(e.value)
        assert {p.name: p.read_text() for p in out.iterdir()} == before  # untouched
    else:
        WRITERS[writer](inputs, out, state.endswith("--force"))
        assert (out / "metrics.json").exists() and not (out / "notes.txt").exists()  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["out"] or not out.exists()  # no staging folder left


def test_staging_folders_a_killed_run_left_are_removed_at_the_next_start(inputs, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    for base in ("out", "out.old"):  # a staging folder, and the old run moved aside to be replaced
        (tmp_path / f".{base}.{HOST}.{dead}.tmp").mkdir()
        (tmp_path / f".{base}.{HOST}.{dead}.tmp" / "head.pt").write_text("half written")
    (tmp_path / f".other.{HOST}.{dead}.tmp").mkdir()  # another run's: not ours to clean
    WRITERS["cluster-eval"](inputs, tmp_path / "out", False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.{HOST}.{dead}.tmp", "out"]
