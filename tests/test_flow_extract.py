"""extract --modality flow: stacks decoded at the RGB path's own positions, flow rows aligned in time with an RGB
store's, the settings fingerprinted, RAFT rows equal to torchvision's RAFT and the flow stream called directly,
--save-flow's folder, and a head that tells motion-only classes apart."""

import numpy as np
import pytest
import torch

from conftest import index_frames, read_indices
from data.motion import make_motion_dataset
from data.synth import write_video
from featstore import StoreError, open_store
from featstore.ownership import OwnershipError
from helpers import extract_flags, invoke, tiny_config
from pipeline.decode import Geometry, Sampling, StackSampling, StackStream, decode_video
from pipeline.extract import ExtractError, embed_files, extract, resolve
from pipeline.sources import load_source

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """Two motion-only clips, one a class, 12 frames of 32 px: (manifest, items)."""
    manifest = make_motion_dataset(tmp_path_factory.mktemp("motion"), n_per_class=1, frames=12, size=32,
                                   directions=("left", "right"))
    return manifest, load_source(manifest)


def flow_config(**overrides):
    return tiny_config(**{"sampling": Sampling(every=4), "size": 32, "modality": "flow", "flow_stack": 3,
                          **overrides})


def test_stack_stream_gives_each_sampled_frame_and_the_next_l_and_ends_on_the_last_frames(tmp_path):
    clip = write_video(tmp_path / "index.mkv", index_frames(11, 32, 32))
    stream = StackStream(clip, StackSampling(Sampling(every=4), 3), Geometry(size=32, resize=32, crop="none"))
    stacks = list(stream)
    assert [s.frame_index for s in stacks] == [0, 4, 8] and [s.frame_end for s in stacks] == [4, 8, 11]
    assert [read_indices(s.frames).tolist() for s in stacks] == [[0, 1, 2, 3], [4, 5, 6, 7], [7, 8, 9, 10]]
    assert stream.info.n_frames == 11


@pytest.mark.parametrize("sampling", [Sampling(every=4), Sampling(frames=3), Sampling(fps=10.0, max_frames=2)],
                         ids=["every", "frames", "fps"])
def test_stacks_start_at_the_frames_and_times_the_rgb_path_samples(motion, sampling):
    _, items = motion
    geometry = Geometry(size=32, resize=32, crop="none")
    stacks = list(StackStream(items[0].path, StackSampling(sampling, 3), geometry))
    rgb = decode_video(items[0].path, sampling, geometry, seek="auto")
    assert [s.frame_index for s in stacks] == rgb.frame_index.tolist()
    assert [s.time_s for s in stacks] == rgb.time_s.tolist()


def test_flow_rows_carry_the_rgb_stores_frames_times_and_metadata(motion, tmp_path):
    _, items = motion
    extract(items, tmp_path / "rgb", tiny_config(sampling=Sampling(every=4)))
    extract(items, tmp_path / "flow", flow_config())
    with open_store(tmp_path / "rgb") as rgb, open_store(tmp_path / "flow") as flow:
        assert flow.ids() == rgb.ids()
        for vid in rgb.ids():
            np.testing.assert_array_equal(flow.frame_index(vid), rgb.frame_index(vid))
            np.testing.assert_array_equal(flow.time_s(vid), rgb.time_s(vid))
            assert flow.meta(vid).label == rgb.meta(vid).label and flow.meta(vid).split == rgb.meta(vid).split


def test_flow_settings_change_the_fingerprint_and_an_rgb_store_records_none_of_them():
    def fingerprint(cfg):
        store = resolve(cfg, None, []).store
        return store.fingerprint(store.fingerprint_keys()), store.to_attrs()

    rgb, rgb_attrs = fingerprint(tiny_config(size=128))
    prints = {rgb} | {fingerprint(flow_config(size=128, **change))[0] for change in (
        {}, {"flow_stack": 2}, {"flow": "raft_small", "flow_weights": "none"}, {"flow": "raft_large",
                                                                                "flow_weights": "none"})}
    assert len(prints) == 5
    assert not {"modality", "flow", "flow_stack", "flow_weights"} & set(rgb_attrs)


def test_a_flow_store_refuses_appending_another_flow_setting(motion, tmp_path):
    _, items = motion
    extract(items[:2], tmp_path / "s", flow_config())
    with pytest.raises(StoreError, match="flow_stack"):
        extract(items, tmp_path / "s", flow_config(flow_stack=2))


def test_flow_flags_apply_only_to_modality_flow_and_raft_frames_are_checked_before_any_work():
    with pytest.raises(ExtractError, match="--flow, --save-flow only apply to --modality flow"):
        tiny_config(flow="raft_small", save_flow="out")
    with pytest.raises(ExtractError, match="--flow-weights applies to RAFT"):
        flow_config(flow_weights="none")
    with pytest.raises(ExtractError, match="int8"):
        flow_config(precision="int8")
    with pytest.raises(Exception, match="multiples of 8 and at least 128"):
        resolve(flow_config(flow="raft_small", flow_weights="none"), None, [])


def test_files_reembedded_from_a_flow_store_equal_its_rows(motion, tmp_path):
    _, items = motion
    extract(items[:1], tmp_path / "s", flow_config())
    with open_store(tmp_path / "s") as store:
        (record,) = embed_files([items[0].path], store.config, device="cpu")
        np.testing.assert_allclose(record.features, store.features(items[0].id), atol=1e-5)


def test_save_flow_writes_each_rows_flows_and_never_a_folder_of_other_files(motion, tmp_path):
    _, items = motion
    extract(items[:1], tmp_path / "s", flow_config(save_flow=str(tmp_path / "flows")))
    with open_store(tmp_path / "s") as store:
        rows = store.frame_index(items[0].id).tolist()
    folder = next(p for p in (tmp_path / "flows").iterdir() if p.is_dir())
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i:06d}.{ext}" for i in rows for ext in ("npz", "png"))
    assert np.load(folder / "000000.npz")["flow"].shape == (3, 32, 32, 2)
    extract(items[:2], tmp_path / "s", flow_config(save_flow=str(tmp_path / "flows")))  # its own folder: resumed
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OwnershipError, match="--save-flow"):
        extract(items[:1], tmp_path / "other", flow_config(save_flow=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and not (tmp_path / "other").exists()


@pytest.mark.slow  # RAFT on the CPU, twice, at its smallest input (128 px): ~10 s
def test_raft_rows_equal_torchvision_raft_then_the_cross_modality_flow_stream(tmp_path):
    from torchvision.models import resnet18
    from torchvision.models.optical_flow import Raft_Small_Weights, raft_small

    frames = np.stack([np.roll(index_frames(1, 128, 128)[0], 3 * t, axis=1) for t in range(3)])
    clip = write_video(tmp_path / "pair.mkv", frames)
    (item,) = load_source(clip)
    cfg = flow_config(sampling=Sampling(every=100), size=128, flow="raft_small", flow_weights="none", flow_stack=1)
    extract([item], tmp_path / "s", cfg)
    with open_store(tmp_path / "s") as store:
        row = store.features(item.id)[0]
    decoded = torch.from_numpy(decode_video(clip, Sampling(), Geometry(size=128, resize=128, crop="none")).frames)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        raft = raft_small(weights=None).eval()
        torch.manual_seed(0)
        net = resnet18(weights=None).eval()
    net.fc = torch.nn.Identity()
    net.conv1.weight = torch.nn.Parameter(net.conv1.weight.mean(dim=1, keepdim=True).repeat(1, 2, 1, 1))
    with torch.no_grad():
        first, second = decoded[:1].permute(0, 3, 1, 2), decoded[1:2].permute(0, 3, 1, 2)
        pair = Raft_Small_Weights.DEFAULT.transforms()(first, second)
        flow = raft(*pair)[-1]                                       # (1, 2, H, W): x, y
        direct = net((flow / 20).clamp(-1, 1))[0]
    cosine = torch.nn.functional.cosine_similarity(direct, torch.from_numpy(row), dim=0)
    assert cosine >= 0.9999


@pytest.mark.slow
def test_motion_only_classes_rgb_head_at_chance_farneback_flow_head_above_0_9(tmp_path):
    from heads.api import fit
    from heads.config import TrainConfig

    manifest = make_motion_dataset(tmp_path / "clips", n_per_class=8, frames=12, size=64,
                                   directions=("left", "right"))
    items = load_source(manifest)
    head = TrainConfig(head="linear", epochs=60, patience=60, device="cpu")
    accuracy = {}
    for name, cfg in (("rgb", tiny_config(sampling=Sampling(every=4), size=64)), ("flow", flow_config(size=64))):
        extract(items, tmp_path / name, cfg)
        accuracy[name] = fit(tmp_path / name, head, tmp_path / f"run-{name}").metrics["test"]["accuracy"]
    assert accuracy["rgb"] <= 0.75 and accuracy["flow"] >= 0.9, accuracy


def test_cli_extracts_a_flow_store_and_refuses_flow_flags_without_it_in_one_line(motion, tmp_path):
    manifest, _ = motion
    res = invoke("extract", manifest, "--store", tmp_path / "s", *extract_flags(every=4), "--flow", "farneback")
    assert res.exit_code == 1 and "--flow only apply to --modality flow" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = invoke("extract", manifest, "--store", tmp_path / "s", *extract_flags(every=4), "--modality", "flow",
                 "--flow-stack", "2")
    assert res.exit_code == 0, res.output
    with open_store(tmp_path / "s") as store:
        assert (store.config.modality, store.config.flow, store.config.flow_stack) == ("flow", "farneback", 2)
