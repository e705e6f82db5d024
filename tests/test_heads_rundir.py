"""heads.rundir: every stage-two writer, called from Python (no CLI), guards its output folder the same way."""
import json
import subprocess
import sys

import pytest
from test_heads_train import SMALL, blob_clips, one_thread, write_store  # noqa: F401 (autouse fixture)

import heads
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
    for kind in ("tmp", "old"):
        (tmp_path / f".out.{kind}-{dead}").mkdir()
        (tmp_path / f".out.{kind}-{dead}" / "head.pt").write_text("half written")
    (tmp_path / f".other.tmp-{dead}").mkdir()  # another run's: not ours to clean
    WRITERS["cluster-eval"](inputs, tmp_path / "out", False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.tmp-{dead}", "out"]


# -- reruns: a run folder knows its own files (run_files.json), follow-ups included (issue 24) ---------------------
def _cli(*args):
    from typer.testing import CliRunner

    import cli

    res = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output)
    return res


SMALL_EXTRACT = ["--backbone", "resnet18", "--weights", "none", "--every", "2", "--size", "32", "--crop", "none",
                 "--workers", "0"]
FOLLOW_UPS = {  # a documented follow-up that writes into (or reads) a fit-head run
    "evaluate --report": lambda run, clip: ("evaluate", run, "--report"),
    "evaluate --split val --report": lambda run, clip: ("evaluate", run, "--split", "val", "--report"),
    "predict": lambda run, clip: ("predict", run, clip),
    "explain": lambda run, clip: ("explain", run, clip, "--frames", "2", "--layer", "layer3"),
}


@pytest.fixture(scope="module")
def clips_store(tmp_path_factory):
    from data.synth import make_temporal_dataset

    root = tmp_path_factory.mktemp("reruns")
    manifest = make_temporal_dataset(root / "clips", n_per_class=8, frames=8, size=32, seed=1)
    _cli("extract", manifest, *SMALL_EXTRACT, "--store", root / "store")
    return root, manifest


@pytest.mark.slow
@pytest.mark.parametrize("follow_up", list(FOLLOW_UPS))
def test_fit_head_reruns_into_its_own_out_after_each_follow_up(clips_store, tmp_path, follow_up):
    root, manifest = clips_store
    if follow_up == "explain":
        pytest.importorskip("pytorch_grad_cam")
    run = tmp_path / "run"
    fit = ("fit-head", root / "store", "--head", "linear", "--epochs", "2", "--out", run)
    _cli(*fit)
    clip = sorted((root / "clips").rglob("*.mp4"))[0]
    _cli(*FOLLOW_UPS[follow_up](run, clip))
    _cli(*FOLLOW_UPS[follow_up](run, clip))  # the follow-up twice too: it replaces its own files
    _cli(*fit)
    assert not [p for p in run.iterdir() if p.name.startswith(("report-", "explain"))]  # replaced whole


@pytest.mark.slow
def test_every_command_runs_twice_into_the_same_out(clips_store, tmp_path):
    root, manifest = clips_store
    store, other = root / "store", tmp_path / "other"
    _cli("extract", manifest, *SMALL_EXTRACT, "--store", other)
    twice = [
        ("extract", manifest, *SMALL_EXTRACT, "--store", other),  # resumes: nothing left to do
        ("compact", store, tmp_path / "one.h5"),  # a framecache file is replaced without --force
        ("fit-head", store, "--epochs", "1", "--seeds", "2", "--out", tmp_path / "seeds"),
        ("fit-head", store, "--epochs", "1", "--folds", "2", "--out", tmp_path / "folds"),
        ("fit-head", store, other, "--epochs", "1", "--out", tmp_path / "multi"),
        ("fit-head", "--store", store, "--store", other, "--fuse", "concat", "--epochs", "1", "--out",
         tmp_path / "fused"),
        ("sweep", store, "--grid", "lr=1e-3,3e-3", "--epochs", "1", "--out", tmp_path / "sweep"),
        ("cluster-eval", store, "--k", "2", "--plot", "pca", "--thumbnails", "--out", tmp_path / "km"),
    ]
    for args in twice:
        _cli(*args)
        _cli(*args)
    _cli("fit-head", store, "--epochs", "1", "--out", tmp_path / "a")
    _cli("fit-head", store, "--head", "mlp", "--epochs", "1", "--out", tmp_path / "b")
    for _ in range(2):
        _cli("fuse", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "late")
        _cli("evaluate", tmp_path / "seeds" / "seed-0", "--report")
    assert (tmp_path / "km" / "thumbnails.png").exists()


def test_a_users_file_beside_a_run_still_makes_the_rerun_refuse(inputs, tmp_path):
    out = tmp_path / "out"
    WRITERS["cluster-eval"](inputs, out, False)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(HeadError, match=r"--force.*|notes\.txt"):
        WRITERS["cluster-eval"](inputs, out, False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_run_from_before_run_files_json_is_refused_naming_force(inputs, tmp_path):
    out = tmp_path / "out"
    WRITERS["cluster-eval"](inputs, out, False)
    (out / "run_files.json").unlink()
    with pytest.raises(HeadError, match="without run_files.json.*--force"):
        WRITERS["cluster-eval"](inputs, out, False)
    WRITERS["cluster-eval"](inputs, out, True)
    assert (out / "run_files.json").exists()


def test_claim_leaves_a_folder_that_is_not_a_run_alone(tmp_path):
    from heads.rundir import claim

    (tmp_path / "run_files.json").write_text('{"files": []}')  # someone else's file of that name, no run beside it
    claim(tmp_path / "explain" / "a.png")
    assert (tmp_path / "run_files.json").read_text() == '{"files": []}'


@pytest.mark.slow
def test_demo_runs_twice_in_a_row(tmp_path):
    """`make demo` twice: the second run resumes the store and replaces its own runs (cluster-eval's included)."""
    for _ in range(2):
        res = subprocess.run([sys.executable, "cli.py", "demo", "--root", str(tmp_path), "--clips-per-class", "4"],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "runs" / "kmeans" / "run_files.json").exists()
