"""heads.rundir: every stage-two writer, called from Python (no CLI), guards its output folder the same way."""
import json
import subprocess
import sys

import pytest
from helpers import SMALL, blob_clips, invoke, write_store

import heads
from featstore.ownership import OwnershipError
from featstore.staging import HOST
from heads.rundir import MANIFEST, check_run_dir, run_kind, safe_name, staged_run

pytestmark = pytest.mark.usefixtures("one_thread")
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
        with pytest.raises(OwnershipError, match="--force") as e:
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


def staging_folders(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def write_run(folder, config, *names):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name in names:
        (folder / name).write_text("old")
    (folder / MANIFEST).write_text(json.dumps({"files": ["config.json", *names]}))  # a run lists what it wrote
    return folder


def test_run_kind_is_read_off_config_json_and_knows_fit_head_runs_written_before_it_was_recorded(tmp_path):
    kinds = {"km": {"command": "cluster-eval"}, "single": {"command": "fit-head"}, "sw": {"grid": {"lr": [1]}},
             "rep": {"mode": "seeds"}, "late": {"fuse": "late"}, "old": {"train": {"head": "linear"}},
             "list": ["not", "an", "object"], "cut": '{"command": "fit-', "other": {"command": "sweep"}}
    assert {name: run_kind(write_run(tmp_path / name, config)) for name, config in kinds.items()} == {
        "km": "cluster-eval", "single": "fit-head", "sw": "sweep", "rep": "fit-head --seeds", "late": "fuse",
        "old": "fit-head", "list": None, "cut": None, "other": None}
    assert run_kind(tmp_path / "absent") is None


def test_check_run_dir_takes_an_absent_empty_or_same_kind_folder_and_names_force_for_anything_else(tmp_path):
    check_run_dir(tmp_path / "absent", "fit-head")
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty", "fit-head")
    run = write_run(tmp_path / "run", {"command": "fit-head"}, "head.pt", "metrics.json")
    check_run_dir(run, "fit-head")
    holds_run = r"already holds a fit-head run \(.*head.pt.*\).*--force to replace it whole"
    with pytest.raises(OwnershipError, match=holds_run):
        check_run_dir(run, "cluster-eval")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OwnershipError, match=r"already holds a fit-head run and other files \(notes.txt\).*--force"):
        check_run_dir(run, "fit-head")
    check_run_dir(run, "fit-head", force=True)
    check_run_dir(write_run(tmp_path / "rep", {"mode": "seeds"}, "seed-0", "seed-1"), "fit-head --seeds")
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(OwnershipError, match="is a file"):
        check_run_dir(tmp_path / "afile", "fit-head", force=True)


def test_staged_run_replaces_the_old_run_whole_and_only_once_the_new_one_is_complete(tmp_path):
    out = write_run(tmp_path / "run", {"command": "fit-head"}, "head.pt", "confusion.png")
    with staged_run(out, "fit-head") as stage:
        assert stage.parent == tmp_path and stage != out
        (stage / "config.json").write_text('{"command": "fit-head", "new": true}')
        (stage / "head.pt").write_text("new")
        assert (out / "head.pt").read_text() == "old"  # nothing moves before the run has finished
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "head.pt", MANIFEST]  # no old confusion.png
    assert (out / "head.pt").read_text() == "new" and not staging_folders(tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        with staged_run(out, "fit-head") as stage:
            (stage / "head.pt").write_text("half")
            raise RuntimeError("interrupted")
    assert (out / "head.pt").read_text() == "new" and not staging_folders(tmp_path)


def test_safe_name_keeps_a_split_name_one_harmless_path_component():
    assert [safe_name(s) for s in ("test", "a/b", "..\\x", ".hidden", "")] == ["test", "a_b", "_.._x", "_.hidden", "_"]


# -- through the CLI -----------------------------------------------------------------------------------------------
def test_fit_head_refuses_a_folder_with_other_files_until_force(tiny_store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text('{"mine": true}')
    res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", out)
    assert res.exit_code == 1 and "--force" in res.output and "notes.txt" in res.output
    assert json.loads((out / "config.json").read_text()) == {"mine": True}
    res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert not (out / "notes.txt").exists() and (out / "head.pt").exists()  # --force replaces the folder whole
    assert not staging_folders(tmp_path)


def test_a_run_of_the_same_command_is_replaced_and_another_kind_is_refused(tiny_store, tmp_path):
    out = tmp_path / "run"
    assert invoke("fit-head", tiny_store, "--epochs", "1", "--out", out).exit_code == 0
    first = (out / "head.pt").read_bytes()
    assert invoke("fit-head", tiny_store, "--epochs", "1", "--seed", "1", "--out", out).exit_code == 0
    assert (out / "head.pt").read_bytes() != first
    res = invoke("cluster-eval", tiny_store, "--plot", "none", "--out", out)
    assert res.exit_code == 1 and "fit-head run" in res.output
    km = tmp_path / "km"
    assert invoke("cluster-eval", tiny_store, "--plot", "none", "--out", km).exit_code == 0
    assert invoke("cluster-eval", tiny_store, "--plot", "none", "--out", km).exit_code == 0
    res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", km)
    assert res.exit_code == 1 and "cluster-eval run" in res.output
    assert not staging_folders(tmp_path)


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
    with pytest.raises(OwnershipError, match=r"--force.*|notes\.txt"):
        WRITERS["cluster-eval"](inputs, out, False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_run_from_before_run_files_json_is_refused_naming_force(inputs, tmp_path):
    out = tmp_path / "out"
    WRITERS["cluster-eval"](inputs, out, False)
    (out / "run_files.json").unlink()
    with pytest.raises(OwnershipError, match="without run_files.json.*--force"):
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
    for _ in range(2):  # in this process: what is checked is the command's result, not a process's
        res = invoke("demo", "--root", tmp_path, "--clips-per-class", "4")
        assert res.exit_code == 0, res.output[-2000:]
    assert (tmp_path / "runs" / "kmeans" / "run_files.json").exists()


def test_a_store_or_a_file_of_one_is_never_a_run_folder_even_with_force(tiny_store):
    before = sorted(p.name for p in tiny_store.iterdir())
    for target in (tiny_store, tiny_store / "runs"):
        res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", target, "--force")
        assert res.exit_code == 1 and "never written over" in res.stderr, res.output
    assert sorted(p.name for p in tiny_store.iterdir()) == before
