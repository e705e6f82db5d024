from pipeline.decode.frames import (CROPS, RESIZE_ENGINES, WINDOW, Clip, ClipSampling, ClipStream, DecodedVideo,
                                    DecodeError, FrameStream, FrameWindow, Geometry, Sampling, SamplingError, VideoInfo,
                                    clip_count, decode_chosen, decode_image, decode_video, quarter_turns, sample_indices,
                                    set_decoder_threads, uniform_starts)
from pipeline.decode.seek import SEEK_MODES
