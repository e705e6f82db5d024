"""pipeline.decode: sampling rules, exact frame content, geometry, timestamps, frame counts and bad inputs."""
import av
import numpy as np
import pytest
from conftest import FPS, N_FRAMES, VFR_TIMES, index_frames, read_indices
from helpers import write_rotated

from data.synth import write_video
from pipeline.decode import DecodeError, Geometry, Sampling, decode_image, decode_video, sample_indices

FULL = Geometry(size=32, resize=40, crop="none")


# --- Sampling and Geometry: pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, sampling, expected", [
    (25, Sampling(every=10), [0, 10, 20]),
    (20, Sampling(every=1), list(range(20))),
    (3, Sampling(every=10), [0]),                       # a clip shorter than N still yields frame 0
    (100, Sampling(frames=5), [0, 25, 50, 74, 99]),     # linspace(0, 99, 5).round(): both ends included
    (3, Sampling(frames=8), [0, 1, 2]),                 # more frames asked than exist: each once
    (7, Sampling(frames=1), [0]),
    (20, Sampling(every=2, max_frames=3), [0, 2, 4]),   # the first M
    (10, Sampling(frames=10, max_frames=4), [0, 3, 6, 9]),  # M caps K, still spread over the whole clip
    (0, Sampling(every=3), []),
])
def test_sample_indices_follow_the_rule_exactly(n, sampling, expected):
    got = sample_indices(n, sampling)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_sample_indices_refuses_fps_which_needs_timestamps():
    with pytest.raises(ValueError, match="--fps"):
        sample_indices(100, Sampling(fps=2))


def test_sampling_without_a_rule_keeps_every_frame():
    assert Sampling() == Sampling(every=1)
    assert Sampling(max_frames=5).every == 1


def test_sampling_and_geometry_hold_plain_python_numbers_for_the_json_config():
    import json

    sampling, geometry = Sampling(fps=np.float32(2.5), max_frames=np.int64(8)), Geometry(size=np.int64(112), resize=128)
    assert json.dumps([vars(sampling), vars(geometry)])
    assert type(sampling.fps) is float and type(sampling.max_frames) is int and type(geometry.size) is int


@pytest.mark.parametrize("kwargs, flags", [
    ({"every": 10, "fps": 2.0}, ["--every", "--fps"]),
    ({"every": 2, "frames": 8}, ["--every", "--frames"]),
    ({"every": 0}, ["--every"]),
    ({"frames": -3}, ["--frames"]),
    ({"fps": 0.0}, ["--fps"]),
    ({"fps": float("nan")}, ["--fps"]),
    ({"every": 2.5}, ["--every"]),
    ({"max_frames": 0}, ["--max-frames"]),
])
def test_sampling_rejects_bad_rules_naming_the_cli_flags(kwargs, flags):
    with pytest.raises(ValueError) as err:
        Sampling(**kwargs)
    assert all(flag in str(err.value) for flag in flags)


@pytest.mark.parametrize("kwargs, text", [
    ({"crop": "middle"}, "center, square, none"),
    ({"size": 0}, "--size"),
    ({"size": 300, "resize": 256}, "--size"),
])
def test_geometry_rejects_bad_values_naming_the_choices(kwargs, text):
    with pytest.raises(ValueError, match=text):
        Geometry(**kwargs)


# --- what comes out of a real video ------------------------------------------------------------------------------


def test_decoded_frames_equal_the_lossless_source_exactly(square_clip):
    path, source = square_clip
    v = decode_video(path, Sampling(), Geometry(size=40, resize=40, crop="none"))
    assert v.frames.dtype == np.uint8 and v.frames.flags.c_contiguous and v.frames.flags.writeable
    np.testing.assert_array_equal(v.frames, source)
    assert v.frame_index.dtype == np.int64 and v.time_s.dtype == np.float64


def test_every_n_keeps_those_frames_with_their_timestamps(index_clip):
    v = decode_video(index_clip, Sampling(every=7), FULL)
    assert v.frame_index.tolist() == [0, 7, 14, 21, 28]
    assert read_indices(v.frames).tolist() == [0, 7, 14, 21, 28]
    np.testing.assert_allclose(v.time_s, v.frame_index / FPS, atol=1e-6)
    assert (v.n_frames, v.width, v.height) == (N_FRAMES, 64, 48)
    assert v.fps == pytest.approx(FPS)


def test_frames_k_spreads_k_frames_over_the_decoded_count(index_clip):
    v = decode_video(index_clip, Sampling(frames=4), FULL)
    assert v.frame_index.tolist() == [0, 10, 19, 29]
    assert read_indices(v.frames).tolist() == [0, 10, 19, 29]


def test_frames_k_picks_again_when_packets_outnumber_frames(extra_packet_clip):
    with av.open(str(extra_packet_clip)) as c:
        packets = sum(p.size > 0 for p in c.demux(video=0))
    assert packets == N_FRAMES + 1  # the case under test: the cheap count is wrong
    v = decode_video(extra_packet_clip, Sampling(frames=4), FULL)
    assert v.n_frames == N_FRAMES
    assert v.frame_index.tolist() == [0, 10, 19, 29]
    assert read_indices(v.frames).tolist() == [0, 10, 19, 29]


def test_fps_takes_the_first_frame_at_or_after_each_tick(index_clip):
    v = decode_video(index_clip, Sampling(fps=10), FULL)
    # ticks every 0.1 s over frames every 0.04 s: 0.12 is the first frame at or after 0.1, 0.2 hits exactly, ...
    assert v.frame_index.tolist() == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]
    assert read_indices(v.frames).tolist() == v.frame_index.tolist()


def test_fps_follows_timestamps_on_a_variable_frame_rate_video(vfr_clip):
    v = decode_video(vfr_clip, Sampling(fps=4), FULL)
    # ticks 0, .25, .5, ...: 0.0 -> frame 0; 0.25 -> 0.5 (frame 3); 0.75 -> 1.3 (frame 5); 1.5 -> 2.0 (frame 7)
    assert v.frame_index.tolist() == [0, 3, 5, 7]
    np.testing.assert_allclose(v.time_s, [0.0, 0.5, 1.3, 2.0], atol=1e-6)
    assert read_indices(v.frames).tolist() == [0, 3, 5, 7]
    assert v.n_frames == len(VFR_TIMES)
    assert v.fps == pytest.approx((len(VFR_TIMES) - 1) / 2.0)  # measured, not the container's nominal rate


def test_fps_ticks_count_from_the_first_frame_timestamp(offset_clip):
    v = decode_video(offset_clip, Sampling(fps=10), FULL)
    # ticks at 0.22 + k/10 s: 0.32 and 0.42 fall on frames 5 and 10 exactly (float rounding must not skip them);
    # ticks counted from 0 s would give frames 0, 2, 5, 7, 10.
    assert v.frame_index.tolist() == [0, 3, 5, 8, 10]
    np.testing.assert_allclose(v.time_s, [0.22, 0.34, 0.42, 0.54, 0.62], atol=1e-6)  # timestamps as stored


def test_max_frames_keeps_the_first_m_and_still_counts_the_whole_clip(index_clip):
    every = decode_video(index_clip, Sampling(every=2, max_frames=4), FULL)
    fps = decode_video(index_clip, Sampling(fps=10, max_frames=3), FULL)
    assert every.frame_index.tolist() == [0, 2, 4, 6]
    assert fps.frame_index.tolist() == [0, 3, 5]
    assert every.n_frames == fps.n_frames == N_FRAMES


def test_clip_shorter_than_every_yields_frame_0(short_clip):
    v = decode_video(short_clip, Sampling(every=10), FULL)
    assert v.frame_index.tolist() == [0] and v.n_frames == 3


def test_every_container_and_codec_decodes_all_frames_in_order(container_clip):
    path, exact = container_clip
    v = decode_video(path, Sampling(), Geometry(size=32, resize=40, crop="center"))
    assert v.n_frames == N_FRAMES and v.frames.shape == (N_FRAMES, 32, 32, 3)
    assert read_indices(v.frames).tolist() == list(range(N_FRAMES))
    np.testing.assert_allclose(v.time_s, np.arange(N_FRAMES) / FPS, atol=1e-3)
    if exact:
        full = decode_video(path, Sampling(every=5), Geometry(size=48, resize=48, crop="square"))
        np.testing.assert_array_equal(full.frames, index_frames(N_FRAMES, 48, 64)[::5, :, 8:56])


def _swscale_reference(source: np.ndarray, width: int, height: int) -> np.ndarray:  # (H, W, 3) -> (height, width, 3)
    frame = av.VideoFrame.from_ndarray(source, format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()


@pytest.mark.parametrize("clip, source_hw, geometry, scaled, top_left", [
    ("index_clip", (48, 64), Geometry(size=32, resize=40, crop="center"), (53, 40), (4, 10)),  # short side 40
    ("index_clip", (48, 64), Geometry(size=32, crop="square"), (42, 32), (0, 5)),  # short side 32, center square
    ("index_clip", (48, 64), Geometry(size=24, crop="none"), (24, 24), (0, 0)),    # whole frame squashed
    ("portrait_clip", (63, 47), Geometry(size=32, resize=40), (40, 53), (10, 4)),  # 40 * 63 / 47 = 53.6 -> 53
])
def test_geometry_resizes_then_center_crops_like_torchvision(request, clip, source_hw, geometry, scaled, top_left):
    v = decode_video(request.getfixturevalue(clip), Sampling(every=3), geometry)
    assert v.frames.shape[1:] == (geometry.size, geometry.size, 3)
    (top, left), size = top_left, geometry.size
    for got, i in zip(v.frames, v.frame_index):
        want = _swscale_reference(index_frames(i + 1, *source_hw)[i], *scaled)[top:top + size, left:left + size]
        assert np.abs(got.astype(int) - want).max() <= 2


def test_odd_frame_sizes_decode(odd_clip):
    v = decode_video(odd_clip, Sampling(every=3), Geometry(size=32, resize=36))
    assert (v.width, v.height, v.n_frames) == (63, 47, 10)
    assert v.frames.shape == (4, 32, 32, 3)
    assert read_indices(v.frames).tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_display_matrix_is_applied_like_a_player_shows_the_clip(tmp_path, degrees):
    frames = np.zeros((3, 32, 48, 3), np.uint8)  # landscape as stored; a red block marks the top-left corner
    frames[:, :8, :12, 0] = 255
    frames[:, 8:, :, 2] = np.arange(3)[:, None, None] * 60 + 40
    rotated = write_rotated(tmp_path / "phone.mp4", frames, degrees)
    upright = write_video(tmp_path / "upright.mkv", np.ascontiguousarray(np.rot90(frames, degrees // 90, axes=(1, 2))))
    geometry = Geometry(size=24, resize=24, crop="square")
    got, want = decode_video(rotated, Sampling(), geometry), decode_video(upright, Sampling(), geometry)
    np.testing.assert_array_equal(got.frames, want.frames)
    assert got.rotation == degrees % 360 and want.rotation == 0
    assert (got.width, got.height) == (want.width, want.height) == ((32, 48) if degrees % 180 else (48, 32))


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing", "zero_bytes", "random_bytes", "text_renamed", "truncated_mp4",
                                  "audio_only", "directory"])
def test_unreadable_input_raises_decode_error_naming_the_file(bad_inputs, name):
    path = bad_inputs[name]
    with pytest.raises(DecodeError) as err:
        decode_video(path, Sampling(every=5), FULL)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_audio_only_file_says_there_is_no_video_stream(bad_inputs):
    with pytest.raises(DecodeError, match="no video stream"):
        decode_video(bad_inputs["audio_only"], Sampling(), FULL)


def test_truncated_file_returns_the_frames_before_the_cut(truncated_indexed_mp4):
    v = decode_video(truncated_indexed_mp4, Sampling(), FULL)
    assert 1 <= v.n_frames < N_FRAMES
    assert read_indices(v.frames).tolist() == list(range(v.n_frames))


# --- images -----------------------------------------------------------------------------------------------------


def test_png_image_decodes_exactly_as_one_frame(tmp_path):
    from PIL import Image

    source = index_frames(1, 40, 40)[0]
    Image.fromarray(source).save(tmp_path / "a.png")
    v = decode_image(tmp_path / "a.png", Geometry(size=40, resize=40, crop="none"))
    np.testing.assert_array_equal(v.frames[0], source)
    assert v.frames.flags.writeable  # torch.from_numpy downstream warns on read-only arrays
    assert v.frame_index.tolist() == [0] and v.time_s.tolist() == [0.0] and v.n_frames == 1


def test_jpg_image_gets_the_video_geometry(images):
    v = decode_image(next((images / "disc").glob("*.jpg")), Geometry(size=32, resize=40))
    assert v.frames.shape == (1, 32, 32, 3) and (v.width, v.height) == (64, 64)


def test_unreadable_image_raises_decode_error_naming_the_file(tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("plain text" * 10)
    with pytest.raises(DecodeError, match="not_an_image.png"):
        decode_image(bad, FULL)
    with pytest.raises(DecodeError, match="missing.jpg"):
        decode_image(tmp_path / "missing.jpg", FULL)


def test_synthetic_pairs_hold_the_same_motion_in_opposite_order(temporal_dataset):
    from pipeline.sources import load_source

    trend = {}
    for item in load_source(temporal_dataset):
        frames = decode_video(item.path, Sampling(), Geometry(size=32, crop="none")).frames.astype(float)
        disc_area = (frames.max(axis=-1) >= 60).mean(axis=(1, 2))  # the disc is drawn >= 60, the background below
        brightness = frames.mean(axis=(1, 2, 3))
        signal = disc_area if item.label in ("grow", "shrink") else brightness
        trend.setdefault(item.label, set()).add(int(np.sign(signal[-1] - signal[0])))
    assert trend == {"grow": {1}, "shrink": {-1}, "brighten": {1}, "darken": {-1}}
