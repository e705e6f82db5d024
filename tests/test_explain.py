"""explain: the composed backbone + head equals predict, maps equal a hand-written Grad-CAM, bad input is one line."""
import csv
import json

import numpy as np
import pytest
import torch
from helpers import extract_flags, invoke
from matplotlib.image import imread

from data.synth import make_temporal_dataset
from featstore import StoreConfig
from heads.data import batches, cache_from_arrays
from heads.run import load_run
from heads.train import evaluate
from pipeline.backbones import REGISTRY, load_backbone
from pipeline.extract import embed_files

pytest.importorskip("pytorch_grad_cam")

from explain.cam import compute_maps  # noqa: E402  (after the skip: needs grad-cam)
from explain.model import decode_for, head_rows, load_run_model, to_pixels  # noqa: E402

# 64 px: resnet18's layer4 is then 2x2, the smallest input that still has a spatial map. fp32 so that predict's
# embedding (which uses the store's precision) is the composed model's arithmetic; float16 storage is kept, and
# the composed model rounds through it too.
EXTRACT = extract_flags(size=64, precision="fp32")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    manifest = make_temporal_dataset(root / "clips", n_per_class=4, frames=8, size=64, seed=2)
    assert invoke("extract", manifest, *EXTRACT, "--store", root / "store").exit_code == 0
    for head, extra in (("linear", []), ("lstm", ["--hidden", "16", "--max-frames", "5"])):
        res = invoke("fit-head", root / "store", "--head", head, "--epochs", "2", *extra, "--out", root / head)
        assert res.exit_code == 0, res.output
    return root, manifest


def clip_paths(manifest):
    rows = manifest.read_text().splitlines()[1:]
    return [str(manifest.parent / r.split(",")[0]) for r in rows]


@pytest.mark.parametrize("head", ["linear", "lstm"])
def test_composed_model_logits_equal_predict_on_the_same_file(runs, head):
    root, manifest = runs
    path = clip_paths(manifest)[0]
    model, ckpt = load_run(root / head)
    (record,) = embed_files([path], StoreConfig.from_attrs(ckpt["store_config"]), "cpu")   # predict's own embedding path
    expected, _, _ = evaluate(model, batches(cache_from_arrays([record.features]), None, np.arange(1), 1,
                                             ckpt["train_config"]["max_frames"]))
    run = load_run_model(root / head, "cpu")
    video = decode_for(run, path)
    rows = head_rows(len(video.frames), run.max_frames)
    assert len(rows) == (5 if head == "lstm" else 8)  # the lstm reads 5 of the 8 sampled frames, as predict does
    logits, maps = compute_maps(run.model, to_pixels(video.frames[rows], run.device), "layer4", "resnet18",
                                "gradcam", [None])
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4, rtol=0)
    assert maps[0].target == int(expected.argmax())


def reference_gradcam(run, pixels, target):
    """Grad-CAM written out with torch.autograd.grad: one scale over all frames, bilinear upsampling."""
    seen = {}

    def keep(module, inputs, output):
        seen["a"] = output.detach().requires_grad_(True)
        return seen["a"]

    hook = run.model.backbone.layer4.register_forward_hook(keep)
    try:
        logit = run.model(pixels)[0, target]
        (grad,) = torch.autograd.grad(logit, seen["a"])
    finally:
        hook.remove()
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * seen["a"]).sum(1, keepdim=True)).detach()
    up = torch.nn.functional.interpolate(cam, size=pixels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    if up.max() == 0:  # no positive evidence for this class anywhere
        return up.numpy(), np.zeros(len(up), np.float32)
    return (up / up.max()).numpy(), (cam.sum((1, 2, 3)) / cam.sum()).numpy()


def test_maps_equal_a_hand_written_gradcam_scaled_over_all_frames(runs):
    root, manifest = runs
    run = load_run_model(root / "linear", "cpu")
    video = decode_for(run, clip_paths(manifest)[1])
    pixels = to_pixels(video.frames, run.device)
    classes = list(range(len(run.labels)))
    _, all_maps = compute_maps(run.model, pixels, "layer4", "resnet18", "gradcam", classes)
    with_evidence = 0
    for c, maps in zip(classes, all_maps):
        cams, share = reference_gradcam(run, pixels, c)
        np.testing.assert_allclose(maps.cams, cams, atol=1e-5)
        np.testing.assert_allclose(maps.share, share, atol=1e-5)
        if cams.max() > 0:
            with_evidence += 1
            assert maps.cams.max() == pytest.approx(1.0) and maps.share.sum() == pytest.approx(1.0, abs=1e-5)
    assert with_evidence >= 1  # gradients reached the frozen backbone's layer (grad-cam's known pitfall)


def test_every_explainable_backbone_names_a_spatial_cam_layer():
    for name, spec in REGISTRY.items():
        if spec.cpu_only or spec.clip is not None:  # int8 and clip backbones are refused by explain
            continue
        b = load_backbone(name, "none")
        layer = dict(b.model.named_modules())[spec.cam_layer]
        seen = []
        hook = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        with torch.no_grad():
            b.model(torch.rand(1, 3, 96, 96))
        hook.remove()
        assert len(seen[0]) == 4 and seen[0][-1] > 1, (name, seen)


def test_explain_writes_one_png_per_video_and_records_a_broken_one(runs, tmp_path):
    root, manifest = runs
    paths = clip_paths(manifest)[:2]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 200)
    out = tmp_path / "maps"
    res = invoke("explain", root / "lstm", paths[0], broken, paths[1], "--frames", "3", "--method", "gradcam++",
                 "--out", out, "--json")
    assert res.exit_code == 2, res.output
    rows = json.loads(res.stdout)
    assert [r["path"] for r in rows] == [paths[0], str(broken), paths[1]]
    assert "error" in rows[1] and "broken.mp4" in rows[1]["error"]
    for r in (rows[0], rows[2]):
        assert set(r) >= {"path", "label", "prob", "png"} and 0 < r["prob"] <= 1
        image = imread(r["png"])
        assert image.shape[1] > 2 * image.shape[0]  # one row of 3 frames
    assert len(json.loads((out / "index.json").read_text())) == 3


def test_explain_a_named_class_and_the_most_confident_mistakes(runs, tmp_path):
    root, _ = runs
    res = invoke("explain", root / "linear", "--mistakes", "2", "--class", "grow", "--out", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert 1 <= len(rows) <= 2 and all(r["class"] == ["grow"] and r["true"] for r in rows)
    assert all(p.name.startswith("mistake0") for p in tmp_path.glob("*.png"))
    res = invoke("explain", root / "linear", "--mistakes", "1", "--out", tmp_path / "m", "--json")
    (row,) = json.loads(res.stdout)
    assert row["class"][0] == row["label"] and row["class"][-1] == row["true"]  # predicted row, then the truth


def test_explain_bad_input_is_one_line(runs, tmp_path):
    root, manifest = runs
    path = clip_paths(manifest)[0]
    cases = [(["--class", "walk"], "not one of the run's labels"),
             (["--layer", "layer9"], "layer4"),                    # the valid layers are listed
             (["--layer", "avgpool"], "not a spatial map")]
    for extra, words in cases:
        res = invoke("explain", root / "linear", path, *extra, "--out", tmp_path)
        assert res.exit_code == 1 and words in res.output and "Traceback" not in res.output, res.output
    res = invoke("explain", root / "linear", "--out", tmp_path)
    assert res.exit_code == 1 and "--mistakes" in res.output


@pytest.mark.slow
def test_a_run_on_an_int8_store_is_refused_naming_the_float_backbone(tmp_path):
    manifest = make_temporal_dataset(tmp_path / "clips", n_per_class=4, frames=4, size=32, seed=3)
    int8 = extract_flags(every=2, backbone="quantized_mobilenet_v2")
    assert invoke("extract", manifest, *int8, "--store", tmp_path / "s").exit_code == 0
    assert invoke("fit-head", tmp_path / "s", "--epochs", "1", "--out", tmp_path / "run").exit_code == 0
    path = clip_paths(manifest)[0]
    res = invoke("explain", tmp_path / "run", path, "--out", tmp_path / "maps")
    assert res.exit_code == 1 and "int8" in res.output and "--backbone mobilenet_v2" in res.output
    assert "Traceback" not in res.output


def test_evaluate_report_lists_the_mistakes_that_explain_mistakes_draws(runs, tmp_path):
    root, _ = runs
    res = invoke("evaluate", root / "linear", "--report")
    assert res.exit_code == 0, res.output
    report = root / "linear" / "report-test"
    assert {p.name for p in report.iterdir()} == {"per_class.csv", "per_class.png", "mistakes.csv", "confusion.png"}
    first = next(iter(csv.DictReader(open(report / "mistakes.csv"))))
    res = invoke("explain", root / "linear", "--mistakes", "1", "--out", tmp_path, "--json")
    (row,) = json.loads(res.stdout)
    assert row["path"] == first["path"] and row["true"] == first["true"]
