"""Decoding: one video in, only its sampled frames (or clips) out, already at the model's input size, with their
timestamps.

This is the hot path. Each video is decoded once with PyAV (FFmpeg) using the decoder's own threads; every frame is
decoded (the codec needs them) but only the sampled ones are converted (RGB in swscale, then the resize the weights'
own transforms do: PIL bilinear for image models, torch bilinear for video models), so memory holds the sampled
frames and nothing else. Clips stream: `ClipStream` holds at most one clip's frames of a video at a time.

    sampling.py    which frames or clips to keep (Sampling, ClipSampling, sample_indices)
    container.py   opening a file, reading its frames, DecodeError
    frames.py      sampled frames in windows or at once (FrameStream, decode_video, decode_chosen, decode_image)
    seek.py        the packet index and the seeker that FrameStream's --seek uses
    conversion.py  frame -> size x size RGB (Geometry, the resize engines)
    clips.py       clips cut while decoding (ClipStream, clip_count)
    torchcodec_frames.py  the second decoder (--decoder torchcodec): the frames an index names, by torchcodec
    stacks.py      each sampled frame with the frames after it, for flow stacks (StackStream, StackSampling)
"""
from pipeline.decode.clips import Clip, ClipStream, clip_count, uniform_starts
from pipeline.decode.container import DecodeError, set_decoder_threads
from pipeline.decode.conversion import CROPS, RESIZE_ENGINES, Geometry, quarter_turns
from pipeline.decode.frames import (WINDOW, DecodedVideo, FrameStream, FrameWindow, VideoInfo, decode_chosen,
                                    decode_image, decode_video)
from pipeline.decode.sampling import ClipSampling, Sampling, SamplingError, sample_indices
from pipeline.decode.seek import SEEK_MODES
from pipeline.decode.stacks import StackSampling, StackStream, no_motion
from pipeline.decode.torchcodec_frames import DECODERS

__all__ = ["CROPS", "DECODERS", "RESIZE_ENGINES", "SEEK_MODES", "WINDOW", "Clip", "ClipSampling", "ClipStream",
           "DecodeError", "DecodedVideo", "FrameStream", "FrameWindow", "Geometry", "Sampling", "SamplingError",
           "StackSampling", "StackStream", "VideoInfo", "clip_count", "decode_chosen", "decode_image", "decode_video",
           "no_motion", "quarter_turns", "sample_indices", "set_decoder_threads", "uniform_starts"]
