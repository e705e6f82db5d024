"""Damaged metadata and header (issue 19, item 6): every file of a store x every kind of damage, with real HDF5
files and real `cli.py` processes.

Rule checked for each cell: `verify --deep` names the damaged file and the fix; a reader (`compact`, which reads the
header, the metadata updates and every frame) names it in one line or, for a header the shards can rebuild, just
works; the fix (`verify --repair`, or `compact` again for a compacted file) gives a store whose features equal the
original. A deleted shard or metadata update cannot be told from one never written: the store stays readable
without it (the next extract, or `extract --update-meta`, writes it again).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore import StoreError, StoreWriter, VideoRecord, compact, open_store, verify_store
from featstore.meta import MetaChange, write_meta_update

ROOT = Path(__file__).resolve().parents[1]
SHARD, HEADER, OVERLAY, COMPACTED = "p0-000000.h5", "_store.h5", "_meta.000001.h5", "c.h5"
DAMAGES = ("truncated", "deleted", "bit-flipped", "foreign")
NEW_LABEL = "relabelled-by-update"


def make_store(path: Path, backbone: str) -> Path:
    """Eight videos in two shards, and one metadata update relabelling two of them."""
    rng = np.random.default_rng(len(backbone))
    with StoreWriter(path, {"backbone": backbone, "weights": "none"}, ["backbone", "weights"], 16,
                     dtype="float32", flush_videos=4) as w:
        for i in range(8):
            w.add(VideoRecord(f"v{i}", label="ab"[i % 2], features=rng.standard_normal((5, 16)).astype("f4"),
                              frame_index=np.arange(5), time_s=np.arange(5) / 25.0))
    write_meta_update(path, [MetaChange(f"v{i}", {"label": "ab"[i % 2]}, {"label": NEW_LABEL}) for i in (1, 6)])
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    ours, foreign = make_store(root / "ours", "resnet18"), make_store(root / "foreign", "resnet50")
    compact(ours, root / COMPACTED)
    return {"ours": ours, "foreign": foreign, "compacted": root / COMPACTED}


def snapshot(store: Path) -> dict[str, tuple[np.ndarray, str]]:
    with open_store(store) as s:
        return {vid: (s.features(vid), s.meta(vid).label) for vid in s.ids()}


def flip_offset(path: Path, kind: str) -> int:
    """A byte that matters: inside the frame features, the header's fingerprint, or an update's labels."""
    if kind in (SHARD, COMPACTED):
        with h5py.File(path, "r") as f:
            return f["features"].id.get_chunk_info(0).byte_offset + 5
    needle = NEW_LABEL.encode() if kind == OVERLAY else h5py.File(path, "r").attrs["fingerprint"].encode()
    return path.read_bytes().index(needle) + 3


def damage(target: Path, kind: str, how: str, stores: dict[str, Path]) -> None:
    if how == "deleted":
        target.unlink()
    elif how == "truncated":
        data = target.read_bytes()
        target.write_bytes(data[:len(data) // 2])
    elif how == "bit-flipped":
        data = bytearray(target.read_bytes())
        data[flip_offset(target, kind)] ^= 0x01
        target.write_bytes(bytes(data))
    elif kind == COMPACTED:  # foreign: a file that is not a store at all
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    else:  # foreign: the same file of another store (other settings)
        shutil.copyfile(stores["foreign"] / kind, target)


def cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_all(commands: dict) -> dict:
    """Start every cell's command at once (real processes), then collect (rc, stdout + stderr) per cell."""
    procs = {cell: cli(*args) for cell, args in commands.items()}
    return {cell: (p.wait(timeout=300), p.stdout.read() + p.stderr.read()) for cell, p in procs.items()}


def expected_fix(kind: str) -> str:
    return {SHARD: "--quarantine", HEADER: "--repair", OVERLAY: "--repair", COMPACTED: "cli.py compact"}[kind]


def named(kind: str, store: Path) -> str:
    """The name a message gives the damaged file (within its path, for a reader's one line)."""
    return store.name if kind == COMPACTED else kind


def undetectable(kind: str, how: str) -> bool:
    return how == "deleted" and kind in (SHARD, OVERLAY)


def damaged_copies(stores: dict[str, Path], tmp_path: Path) -> dict[tuple[str, str], Path]:
    """One damaged copy of the store (or compacted file) per (file kind, damage kind): the store path of each."""
    where = {}
    for kind in (SHARD, HEADER, OVERLAY, COMPACTED):
        for how in DAMAGES:
            store = tmp_path / f"{kind}-{how}"
            if kind == COMPACTED:
                store = tmp_path / f"{how}-{COMPACTED}"
                shutil.copyfile(stores["compacted"], store)
                target = store
            else:
                shutil.copytree(stores["ours"], store)
                target = store / kind
            damage(target, kind, how, stores)
            where[kind, how] = store
    return where


def assert_repaired(where: dict, stores: dict[str, Path], original: dict, original_file: dict) -> None:
    """After the fix: the features of every video still there equal the original's; only a bad shard's are gone."""
    for (kind, how), store in where.items():
        if kind == COMPACTED:
            compact(stores["ours"], store, force=True)  # the fix the messages name
        got, want = snapshot(store), original_file if kind == COMPACTED else original
        lost = {f"v{i}" for i in range(4)} if kind == SHARD else set()  # the first shard's videos: extract redoes them
        assert set(got) == set(want) - lost, (kind, how)
        for vid, (features, label) in got.items():
            np.testing.assert_array_equal(features, want[vid][0])
            if kind != OVERLAY:  # a moved-aside update's labels come back with `extract --update-meta`
                assert label == want[vid][1], (kind, how, vid)


def read_everything(store: Path) -> None:
    with open_store(store) as s:
        s.load_all(s.ids())


def test_every_damaged_file_is_named_with_its_fix_by_the_library_and_repair_restores_it(stores, tmp_path):
    """The same matrix in one process (fast): verify_store, a reader, verify_store(repair=True)."""
    original, original_file = snapshot(stores["ours"]), snapshot(stores["compacted"])
    where = damaged_copies(stores, tmp_path)
    for (kind, how), store in where.items():
        try:
            report = verify_store(store, deep=True)
            said = "" if report.passed else " ".join(report.bad) + " " + report.fix
        except StoreError as e:  # a compacted file that is not one any more: nothing to verify in it
            said = str(e)
        if undetectable(kind, how):
            assert said == "", (kind, how, said)
        else:
            assert named(kind, store) in said and expected_fix(kind) in said, (kind, how, said)
        if undetectable(kind, how) or (kind == HEADER and how != "foreign"):
            read_everything(store)  # the shards rebuild the header
        else:
            with pytest.raises(StoreError) as e:
                read_everything(store)
            said = str(e.value)
            assert named(kind, store) in said and expected_fix(kind) in said, (kind, how, said)
        if kind != COMPACTED:
            verify_store(store, deep=True, repair=True)
    assert_repaired(where, stores, original, original_file)


@pytest.mark.slow
def test_every_damaged_file_of_a_store_is_named_with_its_fix_and_repair_gives_the_original_features(stores,
                                                                                                      tmp_path):
    original, original_file = snapshot(stores["ours"]), snapshot(stores["compacted"])  # the file: float16 copy
    # Real processes on every kind of file, cut short, and on the header lost or from another store (the three ways
    # a header differs); the in-process matrix above covers all 16 cells through the same code.
    where = {c: p for c, p in damaged_copies(stores, tmp_path).items()
             if c[1] == "truncated" or (c[0] == HEADER and c[1] in ("deleted", "foreign"))}
    cells = list(where)

    verified = run_all({c: ("verify", where[c], "--deep") for c in cells})
    for (kind, how), (rc, output) in verified.items():
        if undetectable(kind, how):
            assert rc == 0 and "store ok" in output, (kind, how, output)
            continue
        flat = " ".join(output.split())
        assert rc == 1 and named(kind, where[kind, how]) in flat and expected_fix(kind) in flat, (kind, how, output)
        assert "Traceback" not in output

    read = run_all({c: ("compact", where[c], tmp_path / f"read-{c[0]}-{c[1]}.h5") for c in cells})
    for (kind, how), (rc, output) in read.items():
        if undetectable(kind, how) or (kind == HEADER and how != "foreign"):  # the shards rebuild the header
            assert rc == 0, (kind, how, output)
            continue
        lines = [line for line in output.splitlines() if line.strip()]
        assert rc == 1 and len(lines) == 1 and named(kind, where[kind, how]) in lines[0], (kind, how, output)
        assert expected_fix(kind) in lines[0], (kind, how, output)

    repaired = run_all({c: ("verify", where[c], "--deep", "--repair") for c in cells if c[0] != COMPACTED})
    for (kind, how), (rc, output) in repaired.items():
        assert "Traceback" not in output, output
        if kind == HEADER:
            assert rc == 0 and "store ok" in output, (kind, how, output)
    assert_repaired(where, stores, original, original_file)


def test_extract_into_a_store_that_lost_its_header_rebuilds_it_says_so_and_embeds_nothing_again(tmp_path):
    from typer.testing import CliRunner

    import cli
    from data.synth import write_video

    rows = ["path,label"]
    for i in range(3):
        write_video(tmp_path / f"c{i}.mkv", np.random.default_rng(i).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
        rows.append(f"c{i}.mkv,{'ab'[i % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "store"
    args = ["extract", str(tmp_path / "m.csv"), "--backbone", "resnet18", "--weights", "none", "--size", "32",
            "--crop", "none", "--workers", "0", "--precision", "fp32", "--store", str(store)]
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    before, shards = snapshot(store), sorted(p.name for p in store.glob("p0-*.h5"))
    (store / HEADER).unlink()
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    assert "note:" in res.output and "rebuilt from its 1 shard(s)" in res.output  # a repair is never silent
    assert sorted(p.name for p in store.glob("p0-*.h5")) == shards  # nothing embedded twice
    assert (store / HEADER).exists() and verify_store(store, deep=True).passed
    got = snapshot(store)
    assert got.keys() == before.keys() and all(np.array_equal(got[v][0], before[v][0]) for v in got)
