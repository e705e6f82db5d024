"""Clip sampling on real tiny videos: spans, strides, K uniform clips, --fps first, padding of short videos."""
import numpy as np
import pytest

from conftest import FPS, N_FRAMES, read_indices
from pipeline.decode import ClipSampling, ClipStream, Geometry, clip_count

GEOM = Geometry(size=32, resize=32, crop="none")


def clips_of(path, **kw):
    stream = ClipStream(path, ClipSampling(**kw), GEOM)
    return list(stream), stream.info


@pytest.mark.parametrize("length, stride", [(8, 8), (8, 4), (5, 7), (30, 1)])
def test_strided_clips_are_consecutive_frames_and_their_count_follows_the_formula(index_clip, length, stride):
    clips, info = clips_of(index_clip, clip_len=length, clip_stride=stride)
    assert len(clips) == (N_FRAMES - length) // stride + 1 == clip_count(N_FRAMES, ClipSampling(length, stride))
    for k, c in enumerate(clips):
        assert c.frames.shape == (length, 32, 32, 3)
        np.testing.assert_array_equal(read_indices(c.frames), np.arange(k * stride, k * stride + length))
        assert (c.frame_index, c.frame_end) == (k * stride, k * stride + length)
        assert c.time_s == pytest.approx(k * stride / FPS) and c.time_end_s == pytest.approx(c.frame_end / FPS)
    assert (info.n_frames, info.fps) == (N_FRAMES, pytest.approx(FPS))


def test_a_video_shorter_than_a_clip_gives_one_clip_padded_with_its_last_frame(short_clip):
    clips, info = clips_of(short_clip, clip_len=8)
    assert len(clips) == 1 == clip_count(3, ClipSampling(8))
    np.testing.assert_array_equal(read_indices(clips[0].frames), [0, 1, 2, 2, 2, 2, 2, 2])
    assert (clips[0].frame_index, clips[0].frame_end, info.n_frames) == (0, 3, 3)


def test_k_uniform_clips_spread_over_the_video(index_clip, extra_packet_clip):
    for path in (index_clip, extra_packet_clip):  # the second one's packet count is wrong: cut again
        clips, _ = clips_of(path, clip_len=8, clips=4)
        assert [c.frame_index for c in clips] == [0, 7, 15, 22]
        np.testing.assert_array_equal(read_indices(clips[-1].frames), np.arange(22, 30))


def test_fps_resamples_before_cutting_and_spans_count_decoded_frames(index_clip):
    clips, _ = clips_of(index_clip, clip_len=4, fps=FPS / 2)
    assert len(clips) == 15 // 4
    np.testing.assert_array_equal(read_indices(clips[1].frames), [8, 10, 12, 14])
    assert (clips[1].frame_index, clips[1].frame_end) == (8, 15)


def test_clip_settings_are_checked_naming_the_flag():
    with pytest.raises(ValueError, match="--clip-len must be a positive integer"):
        ClipSampling(clip_len=0)
    with pytest.raises(ValueError, match="choose --clip-stride or --clips"):
        ClipSampling(clip_len=8, clip_stride=4, clips=3)
