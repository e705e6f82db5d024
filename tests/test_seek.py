"""Seeking for sparse sampling gives exactly what sequential decoding gives (indices, times, pixels, what decoding
measured), on B-frame videos at a constant and a variable frame rate, and falls back to sequential decoding where
the packets cannot number the frames. Frame sampling streams in windows."""
from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import index_frames, read_indices, truncate
from helpers import tiny_config, write_manifest

from data.synth import write_video
from pipeline.decode import FrameStream, Geometry, Sampling, SamplingError, decode_video
from pipeline.decode.seek import read_index

GOP = 10
N = 60
GEOMETRY = Geometry(size=32, resize=32, crop="none")
# Milliseconds per frame, irregular: a variable frame rate (the times of frame k are their running sum).
VFR_STEPS_MS = np.random.default_rng(1).choice([20, 40, 100], N)


def _bframe_video(path):
    """N index frames, H.264 with B-frames and a keyframe every GOP frames (no scene-cut keyframes)."""
    return write_video(path, index_frames(N, 48, 64), codec="libx264", lossless=False,
                       codec_options={"g": str(GOP), "bf": "3", "sc_threshold": "0"})


@pytest.fixture(scope="module")
def bframe_mp4(tmp_path_factory):
    return _bframe_video(tmp_path_factory.mktemp("seek") / "bframes.mp4")


@pytest.fixture(scope="module")
def bframe_vfr_mkv(tmp_path_factory, bframe_mp4):
    """The B-frame video remuxed into Matroska at irregular times: VFR, and its packets out of display order."""
    out = tmp_path_factory.mktemp("seek") / "bframes_vfr.mkv"
    times = np.concatenate([[0], np.cumsum(VFR_STEPS_MS)[:-1]])
    with av.open(str(bframe_mp4)) as src, av.open(str(out), "w") as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.size:
                k = int(round(packet.pts * stream.time_base * 25))  # which frame, at the source's 25 fps
                packet.pts, packet.dts, packet.stream = int(times[k]), None, copy
                packet.time_base = Fraction(1, 1000)
                dst.mux(packet)
    return out


def _decode(path, sampling, seek, window=4):
    stream = FrameStream(path, sampling, GEOMETRY, seek=seek, window=window)
    windows = list(stream)
    assert all(len(w) <= window for w in windows)
    columns = {k: np.concatenate([getattr(w, k) for w in windows])
               for k in ("frames", "frame_index", "time_s", "time_end_s")}
    return stream, columns


SAMPLINGS = [Sampling(every=12), Sampling(every=25), Sampling(fps=2.0), Sampling(frames=4),
             Sampling(every=13, max_frames=3), Sampling(fps=1.5, max_frames=2)]


@pytest.mark.parametrize("clip", ["bframe_mp4", "bframe_vfr_mkv"])
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=str)
def test_seeking_gives_the_frames_sequential_decoding_gives(request, clip, sampling):
    path = request.getfixturevalue(clip)
    sequential, expected = _decode(path, sampling, "never")
    seeking, got = _decode(path, sampling, "always")
    assert seeking.seeks > 0 and seeking.decoded < sequential.decoded  # it did seek, and skipped frames
    for key, column in expected.items():
        np.testing.assert_array_equal(got[key], column, err_msg=key)
    assert seeking.info == sequential.info
    # the pixels are those frames (index_frames counts in 8-level steps, so 32 frames wrap around)
    np.testing.assert_array_equal(read_indices(got["frames"]), got["frame_index"] % 32)


def test_the_test_videos_have_b_frames_and_several_keyframes(bframe_mp4, bframe_vfr_mkv):
    for path in (bframe_mp4, bframe_vfr_mkv):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            index = read_index(stream, container.demux(stream))
        assert len(index) == N and len(index.key_pos) >= N // GOP
        assert np.any(index.decode_pos != np.arange(N))  # decode order is not display order: B-frames
        steps = set(np.diff(index.times).round(3))
        assert len(steps) == (1 if path == bframe_mp4 else 3)  # constant rate; three frame durations


def test_auto_seeks_only_where_it_saves_decoding(bframe_mp4):
    sparse, _ = _decode(bframe_mp4, Sampling(every=25), "auto")
    dense, _ = _decode(bframe_mp4, Sampling(every=3), "auto")
    assert sparse.seeks > 0 and sparse.decoded < N / 2
    assert dense.seeks == 0 and dense.decoded == N


def test_a_stream_the_packets_cannot_number_is_decoded_sequentially(extra_packet_clip):
    with av.open(str(extra_packet_clip)) as container:  # 31 packets, 30 frames: a garbage packet
        stream = container.streams.video[0]
        assert read_index(stream, container.demux(stream)) is None
    sequential, expected = _decode(extra_packet_clip, Sampling(every=7), "never")
    seeking, got = _decode(extra_packet_clip, Sampling(every=7), "always")
    assert seeking.seeks == 0 and seeking.info == sequential.info and sequential.info.n_frames == 30
    for key, column in expected.items():
        np.testing.assert_array_equal(got[key], column, err_msg=key)



@pytest.mark.parametrize("fraction", [0.6, 0.9])
def test_a_truncated_video_seeks_to_the_same_frames(bframe_vfr_mkv, tmp_path, fraction):
    cut = truncate(bframe_vfr_mkv, tmp_path / "cut.mkv", fraction)
    sequential, expected = _decode(cut, Sampling(every=15), "never")
    seeking, got = _decode(cut, Sampling(every=15), "always")
    assert seeking.info == sequential.info and len(expected["frame_index"]) >= 2
    for key, column in expected.items():
        np.testing.assert_array_equal(got[key], column, err_msg=key)


def test_frames_stream_in_windows_that_join_into_the_whole_video(index_clip):
    whole = decode_video(index_clip, Sampling(every=1), GEOMETRY)
    stream, got = _decode(index_clip, Sampling(every=1), "never", window=7)
    np.testing.assert_array_equal(got["frames"], whole.frames)
    np.testing.assert_array_equal(got["frame_index"], np.arange(30))
    assert stream.info.n_frames == whole.n_frames == 30


def test_an_unknown_seek_mode_names_the_flag(index_clip):
    with pytest.raises(SamplingError, match="--seek"):
        FrameStream(index_clip, Sampling(), GEOMETRY, seek="sometimes")


def test_auto_decides_from_the_first_packets_where_keyframes_are_too_far_apart(index_clip):
    stream, got = _decode(index_clip, Sampling(every=5), "auto")  # one keyframe in 30 frames
    sequential, expected = _decode(index_clip, Sampling(every=5), "never")
    assert stream.seeks == 0 and stream.info == sequential.info
    for key, column in expected.items():
        np.testing.assert_array_equal(got[key], column, err_msg=key)


def test_extract_with_seeking_writes_the_store_sequential_decoding_writes(tmp_path, bframe_mp4, bframe_vfr_mkv):
    from featstore import open_store
    from pipeline.extract import extract
    from pipeline.sources import load_source

    items = load_source(write_manifest(tmp_path, [(bframe_mp4, "a"), (bframe_vfr_mkv, "b")]))
    stores = {}
    for seek in ("never", "always"):
        extract(items, tmp_path / seek, tiny_config(sampling=Sampling(every=12), seek=seek))
        stores[seek] = open_store(tmp_path / seek)
    never, always = stores["never"], stores["always"]
    assert never.fingerprint == always.fingerprint and never.ids() == always.ids()
    for vid in never.ids():
        np.testing.assert_array_equal(never.features(vid), always.features(vid))
        np.testing.assert_array_equal(never.frame_index(vid), always.frame_index(vid))
        assert never.meta(vid).n_frames == always.meta(vid).n_frames == N
