"""--decoder torchcodec gives the frames --decoder pyav gives: the same frame numbers (presentation order), sampled
indices, timestamps, counts and rotation on CFR, VFR, B-frame and damaged clips, and pixels within the difference of
two colour converters. Skipped where torchcodec or FFmpeg's shared libraries are missing (the reason is shown)."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import index_frames, read_indices
from helpers import tiny_config, write_clips, write_rotated

from data.synth import write_video
from featstore import open_store
from pipeline.decode import ClipSampling, ClipStream, Geometry, Sampling, SamplingError, decode_video
from pipeline.decode.torchcodec_frames import decoder_unavailable
from pipeline.decoder_choice import DecoderError
from pipeline.extract import ExtractConfig, config_from_store, extract
from pipeline.sources import load_source

if why := decoder_unavailable("torchcodec"):
    pytest.skip(why, allow_module_level=True)

PYAV = Geometry(size=32, resize=40, crop="none")
TORCHCODEC = replace(PYAV, decoder="torchcodec")
SAMPLINGS = [Sampling(every=7), Sampling(frames=4), Sampling(fps=10), Sampling(fps=4), Sampling(every=2, max_frames=4),
             Sampling(fps=10, max_frames=3), Sampling()]
CLIPS = ["index_clip", "vfr_clip", "offset_clip", "odd_clip", "portrait_clip", "short_clip", "extra_packet_clip",
         "truncated_indexed_mp4"]


def assert_same_frames(path, sampling, geometry=PYAV, pixel_atol=0):
    want = decode_video(path, sampling, geometry)
    got = decode_video(path, sampling, replace(geometry, decoder="torchcodec"))
    assert got.frame_index.tolist() == want.frame_index.tolist()
    np.testing.assert_array_equal(got.time_s, want.time_s)
    np.testing.assert_allclose(got.time_end_s, want.time_end_s, atol=1e-9)
    assert (got.n_frames, got.width, got.height, got.rotation) == (want.n_frames, want.width, want.height,
                                                                  want.rotation)
    assert got.fps == pytest.approx(want.fps)
    assert read_indices(got.frames).tolist() == read_indices(want.frames).tolist()
    np.testing.assert_allclose(got.frames.astype(int), want.frames.astype(int), atol=pixel_atol)


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=repr)
@pytest.mark.parametrize("clip", CLIPS)
def test_torchcodec_samples_the_frames_pyav_samples_with_their_timestamps(request, clip, sampling):
    assert_same_frames(request.getfixturevalue(clip), sampling)


def test_torchcodec_numbers_b_frame_and_yuv_streams_like_pyav(container_clip):
    path, exact = container_clip
    # YUV streams: two swscale setups (PyAV's and torchcodec's) round chroma differently by a level or two
    assert_same_frames(path, Sampling(every=3), pixel_atol=0 if exact else 6)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_torchcodec_applies_the_display_matrix_like_pyav(tmp_path, index_clip, degrees):
    frames = np.zeros((3, 32, 48, 3), np.uint8)
    frames[:, :8, :12, 0] = 255
    frames[:, 8:, :, 2] = np.arange(3)[:, None, None] * 60 + 40
    rotated = write_rotated(tmp_path / "phone.mp4", frames, degrees)
    assert_same_frames(rotated, Sampling(), Geometry(size=24, resize=24, crop="square"))


def test_torchcodec_clips_equal_pyav_clips(request):
    for clip in ("index_clip", "vfr_clip", "short_clip"):
        path = request.getfixturevalue(clip)
        for sampling in (ClipSampling(clip_len=4, clip_stride=3), ClipSampling(clip_len=4, clips=3),
                         ClipSampling(clip_len=4, fps=10)):
            want = list(ClipStream(path, sampling, PYAV))
            got = list(ClipStream(path, sampling, TORCHCODEC))
            assert [(c.frame_index, c.frame_end, c.time_s, c.time_end_s) for c in got] == \
                   [(c.frame_index, c.frame_end, c.time_s, c.time_end_s) for c in want]
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.frames, w.frames)


def test_torchcodec_refuses_the_resize_engines_that_work_inside_pyav():
    with pytest.raises(SamplingError, match="--resize-engine swscale"):
        Geometry(engine="swscale", decoder="torchcodec")


def test_every_frame_of_a_clip_comes_through_the_chunks_in_order(tmp_path):
    path = write_video(tmp_path / "long.mp4", index_frames(30, 32, 32), fps=25)
    assert_same_frames(path, Sampling(every=1), Geometry(size=32, resize=32, crop="none"))


def _items(tmp_path):
    return load_source(write_clips(tmp_path, ["v0.mp4", "v1.mp4", "v2.mp4"], frames=3, height=40))


def test_a_store_records_its_decoder_and_resumes_only_with_it(tmp_path):
    items = _items(tmp_path)
    extract(items, tmp_path / "tc", tiny_config(decoder="torchcodec", limit=1))
    config = open_store(tmp_path / "tc").config
    assert config.decoder == "torchcodec" and "decoder" in config.fingerprint_keys()
    assert config_from_store(config).decoder == "torchcodec"  # predict decodes new files the same way
    r = extract(items, tmp_path / "tc", tiny_config(limit=None))  # auto: the store's own decoder
    assert (r.skipped, r.done, r.failed) == (1, 2, [])
    with pytest.raises(DecoderError, match="made with --decoder torchcodec, this run asks for pyav"):
        extract(items, tmp_path / "tc", tiny_config(decoder="pyav", retry_failed=True))


def test_pyav_adds_no_key_so_older_stores_keep_their_fingerprint(tmp_path):
    items = _items(tmp_path)
    extract(items, tmp_path / "pyav", tiny_config(decoder="pyav", limit=1))
    config = open_store(tmp_path / "pyav").config
    assert config.decoder is None and "decoder" not in config.fingerprint_keys()
    with pytest.raises(DecoderError, match="made with --decoder pyav, this run asks for torchcodec"):
        extract(items, tmp_path / "pyav", tiny_config(decoder="torchcodec"))
    extract(items, tmp_path / "tc", tiny_config(decoder="torchcodec", limit=1))
    assert open_store(tmp_path / "tc").fingerprint != open_store(tmp_path / "pyav").fingerprint


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_CLIPS = SHARED / "data" / "ucf101_subset20" / "manifest.csv"
REAL_WEIGHTS = SHARED / "weights" / "mobilenet_v2_float_dequantized.pth"


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_CLIPS.exists() and REAL_WEIGHTS.exists()), reason="../shared not present")
def test_features_of_real_clips_with_real_weights_agree_across_decoders(tmp_path):
    items = load_source(REAL_CLIPS)[::24]  # 6 clips over as many classes
    stores = {}
    for decoder in ("pyav", "torchcodec"):
        cfg = ExtractConfig(backbone="mobilenet_v2", weights=str(REAL_WEIGHTS), sampling=Sampling(every=10),
                            precision="fp32", dtype="float32", workers=0, decoder=decoder)
        extract(items, tmp_path / decoder, cfg)
        stores[decoder] = open_store(tmp_path / decoder)
    for item in items:
        a, b = (np.asarray(stores[d].features(item.id), dtype=np.float64) for d in ("pyav", "torchcodec"))
        assert stores["pyav"].frame_index(item.id).tolist() == stores["torchcodec"].frame_index(item.id).tolist()
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() >= 0.999, (item.id, cosine.min())


@pytest.mark.gpu
@pytest.mark.skipif(decoder_unavailable("torchcodec-cuda") is not None, reason="no CUDA device for NVDEC")
def test_nvdec_samples_the_frames_pyav_samples(tmp_path):
    path = write_video(tmp_path / "yuv.mkv", index_frames(30, 48, 64), fps=25, codec="libx264")  # 4:2:0: NVDEC's
    sampling = Sampling(every=7)
    want = decode_video(path, sampling, PYAV)
    got = decode_video(path, sampling, replace(PYAV, decoder="torchcodec-cuda"))
    assert got.frame_index.tolist() == want.frame_index.tolist()
    np.testing.assert_array_equal(got.time_s, want.time_s)
    assert read_indices(got.frames).tolist() == read_indices(want.frames).tolist()
    assert np.abs(got.frames.astype(int) - want.frames.astype(int)).mean() < 3  # another YUV->RGB conversion


def test_auto_picks_torchcodec_only_where_measured_faster_and_the_engine_allows(monkeypatch):
    import torch

    from pipeline.accel import cpu_kind
    from pipeline.decoder_choice import DECODE_SPEED, DecodeMeasured, decoder_for

    cpu = torch.device("cpu")
    monkeypatch.setitem(DECODE_SPEED, cpu_kind(), DecodeMeasured(pyav=100.0, torchcodec=200.0))
    assert decoder_for("auto", "exact", cpu).name == "torchcodec"
    assert decoder_for("auto", "swscale", cpu).name == "pyav"  # the swscale engines resize inside PyAV
    monkeypatch.setitem(DECODE_SPEED, cpu_kind(), DecodeMeasured(pyav=100.0, torchcodec=105.0))
    assert decoder_for("auto", "exact", cpu).name == "pyav"  # within the noise
