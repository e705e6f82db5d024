"""The OpenCLIP family (pipeline/families/open_clip.py) and zero-shot runs (heads/zeroshot.py): stored rows equal
OpenCLIP's encode_image on its own preprocess of the same decoded frames; the weights and the recipe are fingerprinted;
a zero-shot run predicts what the same random-init CLIP's image/text cosines decide, and evaluate, predict, runs and
fuse take it; hub weights offline fail in one line. A tiny CLIP config keeps it fast on two cores."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featstore import open_store
from helpers import ROOT, child_env, invoke, random_frames, tiny_config, write_manifest, write_video
from pipeline.backbones import BackboneError, build_backbone, weights_for
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract, resolve
from pipeline.sources import load_source

TINY = "fc-tiny-clip"  # registered with open_clip.add_model_config: a 2-layer ViT and text tower at 32 px
TINY_CONFIG = {"embed_dim": 16,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
CLASSES = ["walking", "running", "jumping", "swimming", "climbing", "dancing"]


@pytest.fixture(scope="module")
def open_clip(tmp_path_factory):
    oc = pytest.importorskip("open_clip")
    path = tmp_path_factory.mktemp("configs") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    oc.add_model_config(path)
    return oc


def seeded_clip(open_clip, seed: int = 0):
    """OpenCLIP alone: its model (seeded as --weights none is) and its own eval preprocess."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(TINY)
    return model.eval(), preprocess


def image_rows(model, preprocess, frames: np.ndarray) -> torch.Tensor:
    x = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    with torch.inference_mode():
        return model.encode_image(x)  # (T, D), not normalised


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture()
def videos(tmp_path):
    """Four lossless 48x64 clips of 3 noise frames (any resize that differs from OpenCLIP's would show)."""
    written = {f"v{i}": random_frames(10 + i, 3, 48, 64) for i in range(4)}
    for vid, frames in written.items():
        write_video(tmp_path / f"{vid}.mkv", frames)
    return tmp_path, written


def extract_clip(folder: Path, store: Path, weights: str = "none", labels: list[str] | None = None):
    manifest = write_manifest(folder, [(f"v{i}.mkv", (labels or ["a", "b"] * 2)[i]) for i in range(4)])
    cfg = ExtractConfig(backbone=f"open_clip:{TINY}", weights=weights, sampling=Sampling(every=1), batch_size=4,
                        workers=0, precision="fp32", dtype="float32")
    result = extract(load_source(manifest), store, cfg)
    assert result.done == 4 and not result.failed
    return open_store(store)


def test_open_clip_rows_equal_encode_image_on_its_own_preprocess_of_the_same_frames(open_clip, videos):
    folder, written = videos
    store = extract_clip(folder, folder / "s")
    model, preprocess = seeded_clip(open_clip)
    for vid, frames in written.items():
        got, want = store.features(vid), image_rows(model, preprocess, frames).numpy()
        assert got.shape == want.shape == (3, TINY_CONFIG["embed_dim"])
        assert cosines(got, want).min() >= 0.9999, cosines(got, want)
        assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)  # the rows are kept unnormalised
    recipe = store.config.recipe
    assert recipe["library"] == "open_clip" and recipe["version"] == open_clip.__version__
    assert recipe["model_cfg"] == TINY_CONFIG and recipe["preprocess_cfg"]["interpolation"] == "bicubic"
    assert "recipe" in store.config.fingerprint_keys() and "not normalised" in recipe["row"]


def test_a_changed_checkpoint_file_or_recipe_changes_the_fingerprint_and_files_load_strictly(open_clip, videos):
    folder, written = videos
    for seed in (3, 4):
        torch.save(seeded_clip(open_clip, seed)[0].state_dict(), folder / f"w{seed}.pt")
    first, other = (resolve(ExtractConfig(backbone=f"open_clip:{TINY}", weights=str(folder / f"w{s}.pt")), None, [])
                    for s in (3, 4))
    keys = first.store.fingerprint_keys()
    assert first.store.weights.startswith("file:sha256:") and first.store.weights_sha256
    assert first.store.fingerprint(keys) != other.store.fingerprint(keys)
    newer = replace(first.store, recipe={**first.store.recipe, "version": "99.0"})
    assert newer.fingerprint(keys) != first.store.fingerprint(keys)
    store = extract_clip(folder, folder / "s", str(folder / "w3.pt"))
    model, preprocess = seeded_clip(open_clip, 3)
    assert cosines(store.features("v1"), image_rows(model, preprocess, written["v1"]).numpy()).min() >= 0.9999
    state = model.state_dict()
    state.pop("visual.proj")  # a checkpoint that is not this architecture's: refused, never loaded in part
    torch.save(state, folder / "bad.pt")
    with pytest.raises(BackboneError, match=f"bad.pt does not fit open_clip:{TINY}"):
        build_backbone(weights_for(f"open_clip:{TINY}", str(folder / "bad.pt")))
    with pytest.raises(BackboneError, match="--size 64 does not fit these weights: they take exactly --size 32"):
        resolve(ExtractConfig(backbone=f"open_clip:{TINY}", weights="none", size=64), None, [])
    with pytest.raises(BackboneError, match=f"{TINY} has no pretrained tag 'nope'; its tags: \\(none"):
        weights_for(f"open_clip:{TINY}/nope", "none")


def direct_zero_shot(open_clip, clips: dict[str, np.ndarray], classes: list[str]) -> dict[str, str]:
    """Each clip's class as OpenCLIP alone decides it: the mean over frames of cosine(image, prompt), argmax."""
    model, preprocess = seeded_clip(open_clip)
    tokens = open_clip.get_tokenizer(TINY)([f"a video of a person {c}." for c in classes])
    with torch.inference_mode():
        text = model.encode_text(tokens, normalize=True)  # (C, D)
    picked = {}
    for vid, frames in clips.items():
        rows = torch.nn.functional.normalize(image_rows(model, preprocess, frames), dim=-1)
        picked[vid] = classes[int((rows @ text.T).mean(0).argmax())]
    return picked


@pytest.fixture()
def decided(open_clip, tmp_path):
    """Four clips the random-init CLIP itself classifies into at least two of CLASSES (a random image tower maps most
    images near one direction, so the clips are chosen among 24 colours, each frame a colour plus noise), written
    and labelled with that class: (folder, frames, class) of each."""
    rng = np.random.default_rng(0)
    candidates = {f"c{i}": (rng.integers(0, 240, (1, 1, 1, 3)) + rng.integers(0, 16, (3, 48, 64, 3))).astype(np.uint8)
                  for i in range(24)}
    decided = direct_zero_shot(open_clip, candidates, CLASSES)
    first = {}
    for vid, cls in decided.items():
        first.setdefault(cls, vid)
    chosen = (list(first.values()) + [v for v in decided if v not in first.values()])[:4]
    assert len({decided[v] for v in chosen}) >= 2  # else the test could not tell a constant head
    for i, vid in enumerate(chosen):
        write_video(tmp_path / f"v{i}.mkv", candidates[vid])
    return tmp_path, {f"v{i}": candidates[v] for i, v in enumerate(chosen)}, [decided[v] for v in chosen]


def test_zero_shot_predicts_what_the_clips_own_image_text_cosines_decide_and_runs_like_any_run(decided):
    folder, written, truth = decided
    extract_clip(folder, folder / "s", labels=truth)
    res = invoke("zero-shot", folder / "s", "--labels", ",".join(CLASSES), "--out", folder / "runs" / "zs")
    assert res.exit_code == 0, res.output
    metrics = json.loads((folder / "runs" / "zs" / "metrics.json").read_text())
    assert metrics["labels"] == CLASSES and metrics["split"] == "all" and metrics["test"]["accuracy"] == 1.0
    evaluated = invoke("evaluate", folder / "runs" / "zs", "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["accuracy"] == 1.0, evaluated.output
    res = invoke("predict", folder / "runs" / "zs", *(folder / f"{vid}.mkv" for vid in written), "--json")
    assert res.exit_code == 0, res.output
    assert [row["top"][0]["label"] for row in json.loads(res.output)] == truth
    res = invoke("zero-shot", folder / "s", "--from-store", "--template", "a clip of {}", "--out",
                 folder / "runs" / "vocab")
    assert res.exit_code == 0, res.output
    assert json.loads((folder / "runs" / "vocab" / "metrics.json").read_text())["labels"] == sorted(set(truth))
    listed = invoke("runs", folder / "runs", "--json")
    assert {r["name"]: r["head"] for r in json.loads(listed.output)} == {"zs": "zeroshot", "vocab": "zeroshot"}


def test_zero_shot_runs_fuse_and_load_as_weights_only_checkpoints(decided):
    folder, _, truth = decided
    extract_clip(folder, folder / "s", labels=truth)
    for name, template in (("a", "a video of a person {}."), ("b", "someone {}")):
        res = invoke("zero-shot", folder / "s", "--from-store", "--template", template, "--out", folder / name)
        assert res.exit_code == 0, res.output
    ckpt = torch.load(folder / "a" / "head.pt", weights_only=True)
    assert ckpt["head_config"]["kind"] == "zeroshot" and ckpt["labels"] == sorted(set(truth))
    assert ckpt["zero_shot"]["prompts"][0] == f"a video of a person {ckpt['labels'][0]}."
    res = invoke("fuse", folder / "a", folder / "b", "--out", folder / "fused")
    assert res.exit_code == 0, res.output
    res = invoke("zero-shot", folder / "s", "--from-store", "--out", folder / "a")  # its own kind: replaced
    assert res.exit_code == 0, res.output
    res = invoke("fit-head", folder / "s", "--epochs", "1", "--out", folder / "a")  # another kind: refused
    assert res.exit_code == 1 and "already holds a zero-shot run" in res.output


def test_zero_shot_on_a_store_without_a_text_tower_fails_in_one_line_naming_why(videos):
    folder, _ = videos
    manifest = write_manifest(folder, [(f"v{i}.mkv", "ab"[i % 2]) for i in range(4)])
    extract(load_source(manifest), folder / "s", tiny_config())
    res = invoke("zero-shot", folder / "s", "--from-store", "--out", folder / "zs")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "made with resnet18, which has no text tower" in res.output and not (folder / "zs").exists()
    res = invoke("zero-shot", folder / "s", "--out", folder / "zs")
    assert res.exit_code == 1 and "--labels a,b,c or --from-store" in res.output


@pytest.mark.slow  # a real cli.py process
def test_a_hub_tag_offline_exits_1_in_one_line_naming_the_file_and_where_to_put_it(videos):
    pytest.importorskip("open_clip")
    folder, _ = videos
    manifest = write_manifest(folder, [("v0.mkv", "a")])
    p = subprocess.run([sys.executable, "cli.py", "extract", str(manifest), "--backbone",
                        "open_clip:ViT-B-32/laion2b_s34b_b79k", "--workers", "0", "--store", str(folder / "s")],
                       capture_output=True, text=True, env=child_env(HF_HUB_OFFLINE="1"), cwd=ROOT, timeout=300)
    assert p.returncode == 1, p.stderr
    lines = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, p.stderr
    assert ("huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_pytorch_model.bin"
            in lines[0] and "--weights /path/to/open_clip_pytorch_model.bin" in lines[0]), lines[0]
    assert not (folder / "s").exists()


def test_default_weights_of_a_tag_come_from_the_hugging_face_cache_without_network(open_clip, tmp_path,
                                                                                   monkeypatch):
    from huggingface_hub import constants
    from open_clip import pretrained

    snapshot = tmp_path / "models--me--tiny-clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    model, _ = seeded_clip(open_clip, 5)
    torch.save(model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    monkeypatch.setitem(pretrained._PRETRAINED, TINY, {"mine": pretrained._pcfg(hf_hub="me/tiny-clip/")})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chosen = weights_for(f"open_clip:{TINY}/mine", "DEFAULT")
    assert chosen.id.startswith(f"hub:{TINY}/mine:sha256:") and chosen.file.endswith("open_clip_pytorch_model.bin")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(build_backbone(chosen).model(x), model.encode_image(x), atol=1e-5)
