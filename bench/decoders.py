"""Decoder speed (run by hand, not a test): sampled frames per CPU second of `FrameStream` with --decoder pyav and
--decoder torchcodec, one decoder thread, every 10th frame, the weights' exact resize to 224 (what an image backbone's
decode worker does), clip by clip with the decoders alternating. CPU seconds of this process, not wall-clock: on a
machine shared with other work they move far less than wall-clock does. Also the two decoders' own part alone (no
resize: torchcodec's get_frames_at against PyAV's decode + rgb24), which is where a difference would show. Writes
the figures with the CPU model and flags; DECODE_SPEED (pipeline/decoder_choice.py) takes the `fps` pair of the
CPU kind measured.

    python bench/decoders.py [--data ../shared/data/ucf101_subset20] [--limit 40] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore.atomic import write_text_atomic  # noqa: E402
from pipeline import (FrameStream, Geometry, Sampling, cpu_flags, cpu_kind, cpu_model,  # noqa: E402
                      decoder_unavailable, load_source, set_decoder_threads)


def machine() -> dict:
    """The CPU model and the flags the tables are kept per (pipeline.accel.cpu_kind)."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512", "avx_vnni", "avx2")))
    return {"cpu_model": cpu_model(), "cpu_kind": cpu_kind(), "flags": flags}


def pyav_raw(path: str) -> int:
    import av

    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(f.to_ndarray(format="rgb24") is not None for i, f in enumerate(c.decode(stream)) if i % 10 == 0)


def torchcodec_raw(path: str) -> int:
    from torchcodec.decoders import VideoDecoder

    d = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1)
    return len(d.get_frames_at(list(range(0, d.metadata.num_frames, 10))).data)


def cases() -> dict:
    g = Geometry()  # 224, resize 256, PIL bilinear: the torchvision image preset
    stream = lambda decoder: lambda p: sum(len(w) for w in FrameStream(p, Sampling(every=10),  # noqa: E731
                                                                     replace(g, decoder=decoder), seek="auto"))
    return {"pyav": stream("pyav"), "torchcodec": stream("torchcodec"), "pyav_raw": pyav_raw,
            "torchcodec_raw": torchcodec_raw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ucf101_subset20")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decoders.json")
    args = ap.parse_args()
    if why := decoder_unavailable("torchcodec"):
        sys.exit(why)
    set_decoder_threads(1)
    import torch

    torch.set_num_threads(1)
    items, timed = load_source(args.data / "manifest.csv")[:args.limit], cases()
    cpu_s, frames = dict.fromkeys(timed, 0.0), dict.fromkeys(timed, 0)
    for _ in range(args.rounds):
        for item in items:
            for name, run in timed.items():  # alternating, clip by clip
                t = time.process_time()
                frames[name] += run(item.path)
                cpu_s[name] += time.process_time() - t
    fps = {name: round(frames[name] / cpu_s[name], 1) for name in timed}
    result = {**machine(), "clips": len(items), "rounds": args.rounds, "sampled_frames": frames["pyav"],
              "metric": "sampled frames per CPU second, one thread, every 10th frame", "fps": fps,
              "torchcodec_over_pyav": round(fps["torchcodec"] / fps["pyav"], 3),
              "raw_torchcodec_over_pyav": round(fps["torchcodec_raw"] / fps["pyav_raw"], 3)}
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    old[result["cpu_kind"]] = result
    write_text_atomic(args.out, json.dumps(old, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
