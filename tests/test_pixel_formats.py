"""pipeline.decode across pixel formats: whatever a file's pixels are stored as (PIL modes for images, FFmpeg pixel
formats, ranges and matrices for videos), the RGB that reaches the backbone is the format's true colour at 8 bits,
or the item fails with the reason.

Every file holds flat colours (one per frame), so chroma subsampling and resizing cannot blur them; the expected RGB
is computed here from the format's definition (ITU-R BT.601 / BT.709 matrices, limited or full range, bit depth),
not by FFmpeg or PIL, and the files are written losslessly."""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.decode import RESIZE_ENGINES, DecodeError, Geometry, Sampling, decode_image, decode_video

GEOMETRY = Geometry(size=8, resize=8, crop="none")
COLOURS = np.array([(200, 30, 60), (20, 180, 90), (60, 70, 220), (0, 0, 0), (255, 255, 255), (128, 128, 128)],
                   dtype=np.float64)
GREYS = np.array([(g, g, g) for g in (0, 40, 128, 201, 255)], dtype=np.float64)
SIDE = 16
KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
TOLERANCE = 3  # levels: the format's own quantization, and swscale's fixed-point path for subsampled chroma


def _yuv(rgb: np.ndarray, matrix: str, full: bool, bits: int) -> tuple[int, int, int]:
    """The Y, Cb, Cr code values of an 8-bit RGB colour, by the matrix's definition."""
    kr, kb = KR_KB[matrix]
    r, g, b = rgb / 255
    y = kr * r + (1 - kr - kb) * g + kb * b
    cb, cr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    top = 2 ** bits - 1
    if full:
        return round(y * top), round(2 ** (bits - 1) + cb * top), round(2 ** (bits - 1) + cr * top)
    scale = 2 ** (bits - 8)
    return round((16 + 219 * y) * scale), round((128 + 224 * cb) * scale), round((128 + 224 * cr) * scale)


def _fill(frame: av.VideoFrame, values: list) -> av.VideoFrame:
    """Each plane of `frame` filled with its value (a scalar, or a per-pixel tuple for packed planes)."""
    for plane, value in zip(frame.planes, values):
        value = value if isinstance(value, tuple) else (value,)
        if isinstance(value[0], str):  # ("<u2", v, v, v): samples of that type, else bytes
            cell = np.array(value[1:], dtype=value[0])
        else:
            cell = np.array(value, dtype=np.uint8)
        row_bytes = cell.tobytes() * plane.width
        line = row_bytes.ljust(plane.line_size, b"\0")[:plane.line_size]
        plane.update(line * plane.height)
    return frame


def _yuv_planes(fmt: str, yuv: tuple[int, int, int], bits: int, alpha: bool = False) -> list:
    kind = "<u2" if bits > 8 else None
    planes = [(kind, v) if kind else v for v in yuv]
    if fmt == "nv12":
        return [yuv[0], (yuv[1], yuv[2])]
    return planes + ([(kind, 2 ** bits - 1) if kind else 255] if alpha else [])


def _video_frame(fmt: str, rgb: np.ndarray, tags: dict) -> av.VideoFrame:
    """A flat SIDE x SIDE frame of colour `rgb` stored in pixel format `fmt` (tags: matrix, full, bits)."""
    frame = av.VideoFrame(SIDE, SIDE, fmt)
    r, g, b = (int(v) for v in rgb)
    if "matrix" in tags:
        yuv = _yuv(rgb, tags["matrix"], tags["full"], tags["bits"])
        return _fill(frame, _yuv_planes(fmt, yuv, tags["bits"], alpha=fmt.startswith("yuva")))
    packed = {"rgb24": (r, g, b), "bgr24": (b, g, r), "rgba": (r, g, b, 255), "gray": r, "ya8": (r, 255),
              "rgb48le": ("<u2", r * 257, g * 257, b * 257), "rgba64le": ("<u2", r * 257, g * 257, b * 257, 65535),
              "gray16le": ("<u2", r * 257), "gray10le": ("<u2", round(r * 1023 / 255))}
    if fmt == "gbrp":
        return _fill(frame, [g, b, r])
    if fmt == "gbrp16le":
        return _fill(frame, [("<u2", g * 257), ("<u2", b * 257), ("<u2", r * 257)])
    if fmt == "pal8":  # index 7 everywhere; the palette is native-endian 0xAARRGGBB words
        palette = np.zeros(256, dtype="<u4")
        palette[7] = (255 << 24) | (r << 16) | (g << 8) | b
        frame.planes[0].update(bytes([7]) * frame.planes[0].buffer_size)
        frame.planes[1].update(palette.tobytes())
        return frame
    if fmt == "monob":  # 1 bit per pixel, 1 = white
        frame.planes[0].update((b"\xff" if r else b"\0") * frame.planes[0].buffer_size)
        return frame
    return _fill(frame, [packed[fmt]])


# (pixel format, encoder, container, colours, tags): every encoder here is lossless for its format. `matrix`/`full`
# are written into the stream's colour tags (untagged video is BT.601 limited range, as FFmpeg reads it).
VIDEO_FORMATS = [
    ("yuv420p", "ffv1", "mkv", COLOURS, dict(matrix="bt601", full=False, bits=8)),
    ("yuv420p", "ffv1", "mkv", COLOURS, dict(matrix="bt709", full=False, bits=8, tag=True)),
    ("yuv420p", "ffv1", "mkv", COLOURS, dict(matrix="bt601", full=True, bits=8, tag=True)),
    ("yuvj420p", "libx264", "mkv", COLOURS, dict(matrix="bt601", full=True, bits=8)),
    ("yuv444p", "ffv1", "mkv", COLOURS, dict(matrix="bt601", full=False, bits=8)),
    ("yuv444p", "ffv1", "mkv", COLOURS, dict(matrix="bt709", full=True, bits=8, tag=True)),
    ("yuv422p10le", "ffv1", "mkv", COLOURS, dict(matrix="bt601", full=False, bits=10)),
    ("yuv420p10le", "ffv1", "mkv", COLOURS, dict(matrix="bt709", full=False, bits=10, tag=True)),
    ("yuv444p16le", "ffv1", "mkv", COLOURS, dict(matrix="bt601", full=False, bits=16)),
    ("yuva420p", "ffv1", "mkv", COLOURS, dict(matrix="bt601", full=False, bits=8)),
    ("nv12", "rawvideo", "nut", COLOURS, dict(matrix="bt601", full=False, bits=8)),
    ("rgb24", "rawvideo", "nut", COLOURS, {}),
    ("bgr24", "rawvideo", "nut", COLOURS, {}),
    ("gbrp", "rawvideo", "nut", COLOURS, {}),
    ("gbrp16le", "ffv1", "mkv", COLOURS, {}),
    ("rgb48le", "rawvideo", "nut", COLOURS, {}),
    ("rgba64le", "rawvideo", "nut", COLOURS, {}),
    ("rgba", "rawvideo", "nut", COLOURS, {}),
    ("pal8", "rawvideo", "nut", COLOURS, {}),
    ("gray", "ffv1", "mkv", GREYS, {}),
    ("gray10le", "ffv1", "mkv", GREYS, {}),
    ("gray16le", "ffv1", "mkv", GREYS, {}),
    ("ya8", "ffv1", "mkv", GREYS, {}),
    ("monob", "rawvideo", "nut", GREYS[[0, -1]], {}),
]


def _write_video(path, fmt: str, codec: str, colours: np.ndarray, tags: dict) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width = stream.height = SIDE
        stream.pix_fmt = fmt
        if codec == "libx264":
            stream.options = {"qp": "0"}
        if tags.get("tag"):
            stream.codec_context.colorspace = 1 if tags["matrix"] == "bt709" else 6  # AVCOL_SPC_BT709 / SMPTE170M
            stream.codec_context.color_range = 2 if tags["full"] else 1  # AVCOL_RANGE_JPEG / MPEG
        for i, rgb in enumerate(colours):
            frame = _video_frame(fmt, rgb, tags)
            frame.pts, frame.time_base = i, Fraction(1, 25)
            if tags.get("tag"):
                frame.colorspace = stream.codec_context.colorspace
                frame.color_range = stream.codec_context.color_range
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("fmt, codec, ext, colours, tags", VIDEO_FORMATS,
                         ids=[f"{f}-{t.get('matrix', 'rgb')}-{'full' if t.get('full') else 'limited'}"
                              if t else f for f, _, _, _, t in VIDEO_FORMATS])
def test_every_video_pixel_format_decodes_to_its_true_colours(tmp_path, fmt, codec, ext, colours, tags):
    path = tmp_path / f"v.{ext}"
    _write_video(path, fmt, codec, colours, tags)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == fmt  # stored as asked, not converted on the way
    for engine in RESIZE_ENGINES:  # each converts in its own swscale call
        geometry = Geometry(size=8, resize=8, crop="none", engine=engine)
        got = decode_video(path, Sampling(every=1), geometry).frames[:, SIDE // 4, SIDE // 4].astype(np.int64)
        assert np.abs(got - colours).max() <= TOLERANCE, f"{fmt} ({engine}): decoded {got.tolist()}"


def _png16(path, rgb: np.ndarray, alpha: bool) -> None:
    """A 16-bit RGB(A) PNG (PIL cannot write one): FFmpeg's PNG encoder, one frame."""
    fmt = "rgba64be" if alpha else "rgb48be"
    codec = av.CodecContext.create("png", "w")
    codec.width = codec.height = SIDE
    codec.pix_fmt = fmt
    frame = av.VideoFrame(SIDE, SIDE, fmt)
    words = [int(v) * 257 for v in rgb] + ([40000] if alpha else [])
    _fill(frame, [(">u2", *words)])
    path.write_bytes(b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None)))


def _cmyk(rgb: np.ndarray) -> tuple[int, ...]:
    """CMYK whose naive (profile-less) conversion, R = (255 - C)(255 - K) / 255, is `rgb`."""
    k = 255 - int(rgb.max())
    return (*(0 if k == 255 else round(255 - v * 255 / (255 - k)) for v in rgb), k)


def _lab_grey(g: float) -> tuple[int, int, int]:
    """The CIE L*a*b* bytes (L* scaled to 0..255, a* = b* = 0 at 128) of the sRGB grey g."""
    v = g / 255
    y = v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    lightness = 116 * y ** (1 / 3) - 16 if y > 216 / 24389 else 24389 / 27 * y
    return round(lightness * 255 / 100), 128, 128


def _image(path, mode: str, rgb: np.ndarray) -> None:
    """A flat SIDE x SIDE image of colour `rgb` stored in PIL mode `mode`, in a file format that keeps the mode."""
    r, g, b = (int(v) for v in rgb)
    size = (SIDE, SIDE)
    if mode == "P":
        img = Image.new("P", size, 5)
        img.putpalette([0, 0, 0] * 5 + [r, g, b] + [0, 0, 0] * 250)
    elif mode in ("I;16", "I;16B"):
        img = Image.new(mode, size, r * 257 if r != 4 else 1000)  # 1000 / 257 rounds to 4
    elif mode == "I":  # a 16-bit PGM, which PIL opens as mode I
        path.write_bytes(f"P5\n{SIDE} {SIDE}\n65535\n".encode() + np.full(SIDE * SIDE, r * 257, ">u2").tobytes())
        return
    elif mode in ("RGB;16", "RGBA;16"):
        return _png16(path, rgb, alpha=mode == "RGBA;16")
    else:
        value = {"L": r, "LA": (r, 200), "1": int(r > 0), "RGBA": (r, g, b, 200), "CMYK": _cmyk(rgb),
                 "YCbCr": _yuv(rgb, "bt601", True, 8), "LAB": _lab_grey(r)}[mode]
        img = Image.new(mode, size, value)
    img.save(path)


# (PIL mode, file extension, colours): each file opens in that mode again (checked below).
IMAGE_MODES = [
    ("L", "png", GREYS), ("LA", "png", GREYS), ("1", "png", GREYS[[0, -1]]), ("P", "png", COLOURS),
    ("P", "gif", COLOURS), ("RGBA", "png", COLOURS), ("CMYK", "tif", COLOURS), ("CMYK", "jpg", COLOURS[[3, 4]]),
    ("YCbCr", "tif", COLOURS), ("LAB", "tif", GREYS), ("I;16", "png", np.vstack([GREYS, [(4, 4, 4)]])),
    ("I;16B", "tif", GREYS), ("I", "pgm", GREYS), ("RGB;16", "png", COLOURS), ("RGBA;16", "png", COLOURS),
]


@pytest.mark.parametrize("mode, ext, colours", IMAGE_MODES, ids=[f"{m}-{e}" for m, e, _ in IMAGE_MODES])
def test_every_image_mode_decodes_to_its_true_colours(tmp_path, mode, ext, colours):
    for k, rgb in enumerate(colours):
        path = tmp_path / f"{k}.{ext}"
        _image(path, mode, rgb)
        with Image.open(path) as img:
            assert img.mode == mode.replace(";16", "") if mode.startswith("RGB") else img.mode == mode
        got = decode_image(path, GEOMETRY).frames[0, SIDE // 4, SIDE // 4].astype(np.int64)
        assert np.abs(got - rgb).max() <= TOLERANCE, f"{mode}: decoded {got.tolist()}, wrote {rgb.tolist()}"


@pytest.mark.parametrize("pixels, mode, reason", [
    (np.full((SIDE, SIDE), 0.5, np.float32), "F", "floating-point pixels"),
    (np.full((SIDE, SIDE), 70000, np.int32), "I", "outside 0..65535"),
])
def test_images_without_a_defined_white_level_fail_with_the_reason(tmp_path, pixels, mode, reason):
    path = tmp_path / "deep.tif"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
    with pytest.raises(DecodeError, match=reason):
        decode_image(path, GEOMETRY)


def test_an_image_in_a_clip_store_reaches_torch_without_the_non_writable_array_warning(tmp_path):
    """torch warns once per process when handed a read-only array (PIL's np.asarray view was one): a fresh process
    with warnings as errors decodes an image the way a video backbone's store does (torch's resize)."""
    import subprocess
    import sys

    Image.new("RGB", (SIDE, SIDE), (200, 30, 60)).save(tmp_path / "i.png")
    code = ("import warnings; warnings.simplefilter('error');"
            "from pipeline.decode import Geometry, decode_image;"
            f"decode_image({str(tmp_path / 'i.png')!r}, Geometry(size=8, resize=8, resample='tensor'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and "not writable" not in done.stderr, done.stderr
