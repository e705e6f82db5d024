"""A zero-shot run (cli.py zero-shot) among the other commands: finetune --init-head refuses it in one line (its head
has no weights to train), and explain composes its CLIP image tower with its prompt head into maps. A tiny random-init
CLIP (helpers.py) on 32 px clips."""
import json

import numpy as np
import pytest
from helpers import TINY_CLIP, extract_flags, invoke, register_tiny_clip, write_clips, write_manifest

pytest.importorskip("pytorch_grad_cam")

from explain.cam import compute_maps  # noqa: E402  (after the skip: needs grad-cam)
from explain.model import decode_for, load_run_model, to_pixels  # noqa: E402

FLAGS = extract_flags(size=32, precision="fp32", backbone=f"open_clip:{TINY_CLIP}")


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory):
    """(the clips' manifest, a zero-shot run of two classes on their tiny-CLIP store)."""
    root = tmp_path_factory.mktemp("zs_house")
    register_tiny_clip(root)
    write_clips(root, ["a0.mkv", "a1.mkv", "b0.mkv", "b1.mkv"], frames=3, height=32)
    manifest = write_manifest(root, [("a0.mkv", "walking"), ("a1.mkv", "walking"), ("b0.mkv", "running"),
                                     ("b1.mkv", "running")])
    res = invoke("extract", manifest, *FLAGS, "--store", root / "store")
    assert res.exit_code == 0, res.output
    res = invoke("zero-shot", root / "store", "--labels", "walking,running", "--out", root / "zs")
    assert res.exit_code == 0, res.output
    return manifest, root / "zs"


def test_finetune_init_head_refuses_a_zero_shot_run_in_one_line(zero_shot_run, tmp_path):
    manifest, run = zero_shot_run
    res = invoke("finetune", manifest, "--backbone", f"open_clip:{TINY_CLIP}", "--weights", "none", "--segments",
                 "2", "--workers", "0", "--init-head", run, "--out", tmp_path / "ft")
    assert res.exit_code == 1 and "zeroshot run (prompts from a text tower): it has no weights" in res.output, \
        res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fit-head a linear head" in errors[0] and not (tmp_path / "ft" / "head.pt").exists()


def test_explain_of_a_zero_shot_run_maps_the_prompt_logits_onto_the_clip_towers_patches(zero_shot_run, tmp_path):
    manifest, run = zero_shot_run
    clip = str(manifest.parent / "a0.mkv")
    res = invoke("explain", run, clip, "--frames", "2", "--out", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["png"].endswith(".gradcam.png") and row["label"] in ("walking", "running") and 0 < row["prob"] <= 1
    model = load_run_model(run, "cpu")
    pixels = to_pixels(decode_for(model, clip).frames, model.device)
    _, maps = compute_maps(model.model, pixels, "transformer.resblocks.1.ln_1", f"open_clip:{TINY_CLIP}", "gradcam",
                           [0, 1])
    assert all(m.cams.shape == (len(pixels), 32, 32) and np.isfinite(m.cams).all() for m in maps)
    assert any(m.cams.max() > 0 for m in maps)  # the gradient of a prompt's logit reached the patches
