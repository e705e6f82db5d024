"""What many test files share: the CLI run in this process or in a child, the settings of a tiny extract, clips
written with their manifest, comparing two stores, and synthetic stores for the heads. The fixtures built on these
live in conftest.py. Import what you need (`from helpers import invoke`), so a test file states only what it checks."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from data.synth import write_video
from featstore import StoreWriter, VideoRecord, open_store
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig

ROOT = Path(__file__).resolve().parents[1]
_runner = CliRunner()


# -- the CLI ---------------------------------------------------------------------------------------------------------
def invoke(*args):
    """`cli.py ARGS` in this process; paths and numbers may be passed as they are. Returns click's Result."""
    return _runner.invoke(cli.app, [str(a) for a in args])


def cli_command(*args) -> list[str]:
    """The argv of `python cli.py ARGS` in a child process (run it with cwd=ROOT or child_env())."""
    return [sys.executable, str(ROOT / "cli.py"), *map(str, args)]


def run_cli(*args) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` run to its end in a child process, its output captured as text."""
    return subprocess.run(cli_command(*args), cwd=ROOT, text=True, capture_output=True, timeout=600)


PYTHON_START_S = 30  # a cold `cli.py` start on a busy 2-core machine (imports torch, builds the model)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, with the worktree importable, plus `extra`."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def kill_9_when_shards(proc: subprocess.Popen, store: Path, shards: int = 2, timeout: float = 120) -> None:
    """SIGKILL `proc` once `store` holds `shards` finished shards of the whole run (or after `timeout` s)."""
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(store.glob("p0-*.h5"))) < shards:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# -- a tiny extract ----------------------------------------------------------------------------------------------------
def extract_flags(every: int = 1, size: int = 32, weights: str = "none", workers: int | None = 0,
                  precision: str | None = None, dtype: str | None = None, backbone: str = "resnet18") -> list[str]:
    """`extract` flags of a tiny, fast run: random-init resnet18 on `size` px frames squashed whole (--crop none),
    decoded in this process; --precision and --dtype only where given."""
    flags = ["--backbone", backbone, "--weights", weights, "--every", str(every), "--size", str(size),
             "--crop", "none"]
    for flag, value in (("--workers", workers), ("--precision", precision), ("--dtype", dtype)):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def tiny_config(**overrides) -> ExtractConfig:
    """The library's ExtractConfig of a tiny exact run: random-init resnet18, every frame at 32 px squashed, fp32
    arithmetic and storage, 4 units a batch, decoded in this process; `overrides` replace any field."""
    base = dict(backbone="resnet18", weights="none", sampling=Sampling(every=1), size=32, crop="none", batch_size=4,
                workers=0, precision="fp32", dtype="float32")
    return ExtractConfig(**{**base, **overrides})


# -- clips and manifests ---------------------------------------------------------------------------------------------
def random_frames(seed: int, n: int, height: int = 32, width: int | None = None) -> np.ndarray:  # (n, H, W, 3) uint8
    return np.random.default_rng(seed).integers(0, 256, (n, height, width or height, 3), dtype=np.uint8)


def write_manifest(folder: Path, rows: Iterable[Sequence], columns: Sequence[str] = ("path", "label"),
                   name: str = "m.csv") -> Path:
    """A manifest `folder/name` of these columns, one row per sequence of values; returns its path."""
    lines = [",".join(columns)] + [",".join(map(str, row)) for row in rows]
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def write_clips(folder: Path, names: Sequence[str], frames: int | Sequence[int] = 4, height: int = 32,
                width: int | None = None, **columns: Callable[[int], str]) -> Path:
    """Lossless clips of random frames (clip i from seed i, `frames` or frames[i] of them) named `names` in
    `folder`, labelled a, b, a, ...; each keyword adds a manifest column whose value for clip i is column(i).
    A file already there (a broken one, a named pipe) is kept as it is. Returns the manifest, folder/m.csv."""
    counts = [frames] * len(names) if isinstance(frames, int) else frames
    rows = []
    for i, (name, n) in enumerate(zip(names, counts)):
        if not (folder / name).exists():
            write_video(folder / name, random_frames(i, n, height, width))
        rows.append([name, "ab"[i % 2], *(value(i) for value in columns.values())])
    return write_manifest(folder, rows, ["path", "label", *columns])


def write_split_clips(folder: Path, names: Sequence[str]) -> Path:
    """write_clips of 4 frames each, every clip its own group (g0, g1, ...), every 4th one (3, 7, ...) in test."""
    return write_clips(folder, names, group=lambda i: f"g{i}", split=lambda i: "test" if i % 4 == 3 else "train")


def write_smooth_clips(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Two lossless 96x128 clips of 4 smooth frames, v0 (a) and v1 (b): a resize or crop that differs between two
    recipes shows in them. Returns the manifest, folder/m.csv, and the frames written by id."""
    rows, written = [], {}
    yy, xx = np.mgrid[0:96, 0:128]
    for i in range(2):
        frames = np.stack([np.stack([(xx * (2 + i + t)) % 256, (yy * 3 + 40 * t) % 256, (xx + yy + 17 * i) % 256],
                                    axis=-1) for t in range(4)]).astype(np.uint8)  # (4, 96, 128, 3)
        write_video(folder / f"v{i}.mkv", frames)
        written[f"v{i}"] = frames
        rows.append([f"v{i}.mkv", "ab"[i]])
    return write_manifest(folder, rows), written


def write_rotated(path: Path, frames: np.ndarray, degrees: int) -> Path:
    """A lossless clip whose stream carries a display matrix (what phones write) rotating it `degrees` CCW."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.set_display_rotation(degrees)
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


# -- stores ------------------------------------------------------------------------------------------------------------
def assert_same_store(store: Path, reference: Path, n: int, atol: float = 1e-4) -> None:
    """`store` holds the same n items as `reference`, each once: features within atol, the same frames, labels."""
    a, b = open_store(store), open_store(reference)
    assert sorted(a.ids()) == sorted(b.ids()) and len(set(a.ids())) == len(a.ids()) == n
    for vid in b.ids():
        np.testing.assert_allclose(a.features(vid), b.features(vid), atol=atol)
        np.testing.assert_array_equal(a.frame_index(vid), b.frame_index(vid))
        assert a.meta(vid).label == b.meta(vid).label


def assert_backbone_pt_extracts_its_own_store(run: Path, clips: Path, backbone: str, tmp_path: Path) -> None:
    """`extract --backbone BACKBONE --weights RUN/backbone.pt` (a finetune run's) makes a store whose weights id is the
    file's sha256 (as metrics.json records it) and whose rows differ from random init's."""
    def flags(weights):
        return extract_flags(every=2, weights=weights, precision="fp32", dtype="float32", backbone=backbone)

    assert invoke("extract", clips, *flags(run / "backbone.pt"), "--store", tmp_path / "tuned").exit_code == 0
    assert invoke("extract", clips, *flags("none"), "--store", tmp_path / "random").exit_code == 0
    sha = json.loads((run / "metrics.json").read_text())["backbone_sha256"]
    a, b = open_store(tmp_path / "tuned"), open_store(tmp_path / "random")
    assert a.config.weights == f"file:sha256:{sha[:16]}" and a.fingerprint != b.fingerprint
    vid = a.ids()[0]
    assert not np.allclose(a.features(vid), b.features(vid)), "training must have changed the backbone"


def assert_predict_equals_the_head_on_stored_features(run: Path, store_path: Path, tmp_path: Path) -> None:
    """`cli.py predict RUN` on a copy of the store's first file gives what the run's head gives on its stored rows."""
    from heads.run import load_run, predict_features  # stage two: only the tests that train import it

    store = open_store(store_path)
    vid = store.ids()[0]
    fresh = tmp_path / ("never_seen" + Path(store.meta(vid).path).suffix)
    fresh.write_bytes(Path(store.meta(vid).path).read_bytes())
    res = invoke("predict", run, fresh, "--json", "--top", "4")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    model, ckpt = load_run(run)
    expected = predict_features(model, ckpt, [store.features(vid)])[0]
    got = {t["label"]: t["prob"] for t in row["top"]}
    assert [got[label] for label in ckpt["labels"]] == pytest.approx(expected.tolist(), abs=1e-3)


D = 8  # feature width of the synthetic head stores
SMALL = dict(hidden=32, epochs=25, patience=25, batch_size=16, lr=3e-3)  # heads: quick to train, still learn


def write_store(path: Path, clips, config: dict | None = None) -> Path:
    """A store of synthetic features; clips: list of (id, label, group, split, features (T, D))."""
    config = config or {"backbone": "synthetic", "every": 1}
    with StoreWriter(path, config=config, fingerprint_keys=sorted(config), dim=D) as w:
        for vid, label, group, split, feats in clips:
            t = len(feats)
            w.add(VideoRecord(vid, label=label, group=group, split=split, features=feats.astype(np.float32),
                              frame_index=np.arange(t), time_s=np.arange(t) / 25))
    return path


def blob_clips(n_classes: int = 3, per_class: int = 16, seed: int = 0, split: bool = True) -> list[tuple]:
    """Each class has its own mean feature vector: every head should beat chance. Every 4th clip is test."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (n_classes, D))
    clips = []
    for c in range(n_classes):
        for i in range(per_class):
            t = int(rng.integers(3, 10))
            feats = centers[c] + rng.normal(0, 0.8, (t, D))
            s = ("test" if i % 4 == 0 else "train") if split else ""
            clips.append((f"c{c}_{i}", f"class{c}", f"g{c}_{i // 2}", s, feats))
    return clips


# A 2-layer OpenCLIP ViT and text tower at 32 px (8 px patches: a 4x4 grid after one class token), registered with
# open_clip.add_model_config by register_tiny_clip
TINY_CLIP = "fc-tiny-clip"
TINY_CLIP_CONFIG = {"embed_dim": 16,
                    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)  # a tiny encoder


def register_tiny_clip(folder: Path):
    """open_clip (skipped where absent) with TINY_CLIP registered from a config file written to `folder`."""
    oc = pytest.importorskip("open_clip")
    path = folder / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    oc.add_model_config(path)
    return oc


def save_tiny_hf(path: Path, config, processor, seed: int = 0) -> Path:
    """A randomly initialised transformers model of `config` and its processor, saved as save_pretrained writes
    them (the offline path of `--backbone hf:DIR`)."""
    import torch
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers.AutoModel.from_config(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def hand_gradcam(model, pixels, layer, grid, target: int) -> np.ndarray:
    """Grad-CAM written out for a transformer's `layer`: its tokens without the `grid.prefix` ones, laid on the
    grid.rows x grid.cols patch grid, the class-`target` logit's gradient averaged per channel; one scale per video."""
    import torch

    seen = {}

    def keep(module, inputs, output):
        seen["a"] = output.detach().requires_grad_(True)
        return seen["a"]

    hook = layer.register_forward_hook(keep, prepend=True)
    try:
        (grad,) = torch.autograd.grad(model(pixels)[0, target], seen["a"])
    finally:
        hook.remove()
    acts, grads = (t[:, grid.prefix:].reshape(len(t), grid.rows, grid.cols, -1) for t in (seen["a"].detach(), grad))
    cam = torch.relu((grads.mean((1, 2), keepdim=True) * acts).sum(-1))[:, None]  # (T, 1, rows, cols)
    up = torch.nn.functional.interpolate(cam, size=pixels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (up / up.max()).numpy() if up.max() > 0 else up.numpy()


# -- processes, shared memory ----------------------------------------------------------------------------------------
def children_of(pid: int) -> set[int]:
    """The pids of a process's children (its decode workers)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def gone(pids: set[int], within: float = 5.0) -> bool:
    """Whether every one of `pids` has exited (or is a zombie) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                   for p in pids):
            return True
        time.sleep(0.1)
    return False


def private_shm(free_kb: int | None) -> list[str]:
    """A prefix running the command with its own /dev/shm (1 MB, `free_kb` of it free; None: 64 MB, empty) in a
    private mount namespace, listing what is left in it afterwards."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (unshare -m needs root or user namespaces)")
    size, fill = ("1M", f"dd if=/dev/zero of=/dev/shm/fill bs=1k count={1024 - free_kb} 2>/dev/null; "
                  ) if free_kb is not None else ("64M", "")
    return ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /dev/shm && {fill}"
            '"$@"; code=$?; echo "left in /dev/shm: $(ls /dev/shm | grep -v "^fill$" | tr "\\n" " ")" >&2; '
            "exit $code", "sh"]


def stop_at_held_file(command: list[str], held, fate: str, sig: int | None, wrapped: bool = False,
                      start_s: float = PYTHON_START_S + 60) -> tuple[int, str, float, set[int]]:
    """Run `command` until its decode worker opens `held` (conftest's hold), leave that worker blocked there, stop
    it or kill it (`fate`, one of WORKER_FATES), then send `sig` (if any) to the main process: the command itself,
    or its child when `wrapped` (under private_shm's sh). Returns (exit code, stderr, seconds from then to the exit,
    the worker pids); no process is left behind, whatever failed."""
    proc = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: set[int] = set()
    try:
        assert held.opened.wait(start_s), proc.poll()
        (main,) = children_of(proc.pid) if wrapped else (proc.pid,)
        workers = children_of(main)
        assert workers
        if fate != "blocked opening a file":
            for pid in workers:
                os.kill(pid, signal.SIGSTOP if fate.startswith("stopped") else signal.SIGKILL)
        start = time.monotonic()
        if sig is not None:
            os.kill(main, sig)
        _, stderr = proc.communicate(timeout=60)
        return proc.returncode, stderr, time.monotonic() - start, workers
    finally:
        proc.kill()
        for pid in workers:  # never leave a stopped worker behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        held.release()
