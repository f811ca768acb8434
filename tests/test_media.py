"""The media policy (SPEC §3.1): which frames, which timestamps, which pixels, and the errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fvlm_cli.data import media
from fvlm_cli.data.media import (IMAGE_EXTS, IMAGENET_MEAN, IMAGENET_STD, VIDEO_EXTS, Clip, frames_to_tensor, load_image, load_media, load_video, replicate, resize_center_crop,
                                 sample_timestamps)
from fvlm_cli.errors import FvlmError, MediaError
from media_factory import (default_ext, index_frames, read_index, write_audio_only, write_image, write_video)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from bench_precompute import decode_all_frames_baseline  # noqa: E402  (benchmark-only reader, checked here)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Videos shared by the tests: frame i of every 'index' clip paints the number i (see media_factory)."""
    d = tmp_path_factory.mktemp("media")
    return {
        # 10 s at 30 fps, a keyframe every second (dense) and one keyframe in all (sparse)
        "dense": write_video(d / "dense.mp4", index_frames(300, (64, 48)), fps=30, gop=30),
        "sparse": write_video(d / "sparse.mp4", index_frames(300, (64, 48)), fps=30, gop=300),
        # 200 s at 2 fps: the uniform cap
        "long": write_video(d / "long.mp4", index_frames(400, (32, 32)), fps=2, gop=20),
        "dir": d,
    }


# ---------------------------------------------------------------------------------------------------- policy


def test_sample_timestamps_bin_centres():
    assert sample_timestamps(10.0) == pytest.approx([0.5 + k for k in range(10)])
    assert sample_timestamps(10.0, fps=2) == pytest.approx([0.25 + 0.5 * k for k in range(20)])
    assert sample_timestamps(0.3) == pytest.approx([0.15])  # at least one frame
    assert sample_timestamps(0.0) == [0.0]
    assert sample_timestamps(3.0, fps=1 / 3) == pytest.approx([1.5])  # no frame lost to float rounding
    ts = sample_timestamps(200.0, fps=1, max_frames=64)
    assert len(ts) == 64
    assert ts[0] == pytest.approx(200 / 128) and ts[-1] == pytest.approx(200 - 200 / 128)
    assert np.allclose(np.diff(ts), 200 / 64)


def test_one_fps_frame_count_and_timestamps(clips):
    clip = load_video(clips["dense"], image_size=32)
    assert isinstance(clip, Clip) and not clip.is_image
    assert clip.frames.shape == (10, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.duration == pytest.approx(10.0)
    assert clip.timestamps == pytest.approx([0.5 + k for k in range(10)], abs=1 / 30)
    # the frame on screen at t is frame floor(t * 30): 15, 45, ..., 285
    assert [read_index(f) for f in clip.frames] == [15 + 30 * k for k in range(10)]
    assert load_video(clips["dense"], fps=2, image_size=32).frames.shape[0] == 20


def test_long_clip_is_capped_uniformly_over_whole_video(clips):
    clip = load_video(clips["long"], max_frames=64, image_size=32)
    assert clip.duration == pytest.approx(200.0)
    assert clip.frames.shape[0] == 64
    assert clip.timestamps[0] < 5 and clip.timestamps[-1] > 190
    assert np.allclose(np.diff(clip.timestamps), 200 / 64, atol=0.5 + 1e-6)
    expected = [int(np.floor(t * 2)) for t in sample_timestamps(200.0, 1, 64)]
    assert [read_index(f) for f in clip.frames] == expected


def test_short_clip_gives_one_frame(tmp_path):
    p = write_video(tmp_path / "short.mp4", index_frames(9, (32, 32)), fps=30)  # 0.3 s
    clip = load_video(p, image_size=32)
    assert clip.frames.shape[0] == 1
    assert read_index(clip.frames[0]) == 4  # on screen at 0.15 s
    assert clip.timestamps[0] == pytest.approx(4 / 30, abs=1e-5)


# ---------------------------------------------------------------------------------------------------- pixels


def _centre_pattern(w: int, h: int) -> np.ndarray:
    """Green in the central min(w, h) square, red outside it."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = (255, 0, 0)
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    arr[y0:y0 + s, x0:x0 + s] = (0, 255, 0)
    return arr


@pytest.mark.parametrize("w,h", [(96, 48), (48, 96)])
def test_resize_shorter_side_then_centre_crop(tmp_path, w, h):
    pattern = _centre_pattern(w, h)
    img = resize_center_crop(Image.fromarray(pattern), 32)
    assert img.size == (32, 32)
    arr = np.asarray(img).astype(int)
    # all of the kept square is the green centre; nothing of the red sides (allow a 1-px filter edge)
    inner = arr[1:-1, 1:-1]
    assert inner[..., 1].min() > 200 and inner[..., 0].max() < 60
    # a video frame goes through the same transform
    p = write_video(tmp_path / "c.mp4", np.stack([pattern] * 3), fps=3, codec="libx264", options={"crf": "0"})
    frame = load_video(p, image_size=32).frames[0].astype(int)
    assert np.abs(frame[1:-1, 1:-1] - inner).mean() < 8


def test_image_is_one_frame_and_replicates(tmp_path):
    p = write_image(tmp_path / "a.png", (80, 40), (10, 200, 30))
    clip = load_media(p, image_size=24)
    assert clip.is_image and clip.duration is None and clip.timestamps == [0.0]
    assert clip.frames.shape == (1, 24, 24, 3)
    assert np.abs(clip.frames.astype(int) - (10, 200, 30)).max() <= 2
    rep = replicate(clip.frames, 8)
    assert rep.shape == (8, 24, 24, 3) and all(np.array_equal(f, clip.frames[0]) for f in rep)
    video = np.zeros((5, 24, 24, 3), np.uint8)
    assert replicate(video, 8) is video  # videos keep their frames


def test_image_inputs_bytes_pil_and_modes(tmp_path):
    p = write_image(tmp_path / "b.jpg", (40, 40), (0, 0, 255))
    from_path = load_media(p, image_size=16).frames
    from_bytes = load_media(p.read_bytes(), image_size=16)
    assert from_bytes.is_image and from_bytes.source == "<bytes>"
    assert np.array_equal(from_bytes.frames, from_path)
    assert np.array_equal(load_media(Image.open(p), image_size=16).frames, from_path)
    # transparency is composited on white; greyscale and palette become RGB
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    rgba.save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png", image_size=8).frames.min() >= 250
    grey = write_image(tmp_path / "g.png", (20, 20), (100, 100, 100), mode="L")
    assert load_image(grey, image_size=8).frames.shape == (1, 8, 8, 3)
    pal = write_image(tmp_path / "p.gif.png", (20, 20), (0, 255, 0), mode="P")
    assert load_image(pal, image_size=8).frames[0, 4, 4, 1] > 200


def test_image_exif_orientation(tmp_path):
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = 255  # left half white
    p = write_image(tmp_path / "o.jpg", array=arr, exif_orientation=6)  # 6: display rotated 90° clockwise
    f = load_image(p, image_size=16).frames[0].mean(axis=2)
    assert f[:8].mean() > 200 and f[8:].mean() < 50  # the left half is now on top


@pytest.mark.parametrize("rotation,bright", [(90, "bottom"), (-90, "top"), (180, "right"), (0, "left")])
def test_rotation_metadata_is_honoured(tmp_path, rotation, bright):
    frames = np.zeros((6, 32, 64, 3), np.uint8)
    frames[:, :, :32] = 255  # left half white in the stored frames
    p = write_video(tmp_path / f"r{rotation}.mp4", frames, fps=6, rotation=rotation)
    f = load_video(p, image_size=16).frames[0].mean(axis=2)
    halves = {"top": f[:8].mean(), "bottom": f[8:].mean(), "left": f[:, :8].mean(), "right": f[:, 8:].mean()}
    assert max(halves, key=halves.get) == bright
    assert halves[bright] > 200
    # the display matrix angle is counter-clockwise: for 90° the stored left edge ends up at the bottom
    assert np.array_equal(decode_all_frames_baseline(p, image_size=16).frames, load_video(p, image_size=16).frames)


def test_variable_frame_rate_uses_timestamps(tmp_path):
    times = [0.0, 0.1, 0.2, 1.7, 1.8, 3.9, 4.0, 6.5, 7.2, 9.9]
    p = write_video(tmp_path / "vfr.mp4", index_frames(len(times), (32, 32)), vfr_times=times)
    clip = load_video(p, image_size=32)
    n = len(clip.timestamps)
    targets = sample_timestamps(clip.duration, 1.0, 64)
    # the frame on screen at each target: the last one with time <= target
    expected = [max(i for i, t in enumerate(times) if t <= target + 1e-6) for target in targets]
    assert n == len(targets) == 9
    assert [read_index(f) for f in clip.frames] == expected
    assert clip.timestamps == pytest.approx([times[i] for i in expected], abs=1e-3)


@pytest.mark.parametrize("codec,ext", [("libvpx-vp9", ".webm"), ("gif", ".gif"), ("libx264", ".mkv"),
                                       ("mpeg4", ".avi"), ("libx264", ".mov"), ("libx265", ".mp4"),
                                       ("libx264", ".ts")])
def test_containers_and_codecs(tmp_path, codec, ext):
    p = write_video(tmp_path / f"v{ext}", index_frames(30, (64, 48)), fps=10, codec=codec, gop=10)
    clip = load_media(p, image_size=32)
    assert not clip.is_image and clip.duration == pytest.approx(3.0, abs=0.05)
    assert [read_index(f) for f in clip.frames] == [5, 15, 25]


OPEN_GOP = {"x264-params": "open-gop=1:keyint=10:min-keyint=10:scenecut=0"}
MANY_B = {"x264-params": "keyint=12:min-keyint=12:scenecut=0:bframes=8:b-pyramid=normal"}


@pytest.mark.parametrize("name,codec,ext,gop,options", [
    ("mp4-dense", "libx264", ".mp4", 10, None), ("mp4-sparse", "libx264", ".mp4", None, None),
    ("mp4-allkey", "libx264", ".mp4", 1, None), ("mp4-many-b", "libx264", ".mp4", None, MANY_B),
    ("mp4-open-gop", "libx264", ".mp4", None, OPEN_GOP), ("ts-open-gop", "libx264", ".ts", None, OPEN_GOP),
    ("mkv", "libx264", ".mkv", 10, None), ("webm", "libvpx-vp9", ".webm", 10, None),
    ("ts", "libx264", ".ts", 10, None), ("hevc", "libx265", ".mp4", 10, None)])
def test_seek_stream_and_baseline_give_identical_frames(tmp_path, name, codec, ext, gop, options):
    p = write_video(tmp_path / f"{name}{ext}", index_frames(120, (64, 48)), fps=24, codec=codec, gop=gop,
                    options=options)
    base = decode_all_frames_baseline(p, fps=2, image_size=32)
    assert [read_index(f) for f in base.frames] == [6 + 12 * k for k in range(10)]
    for strategy in ("auto", "seek", "stream"):
        clip = load_video(p, fps=2, image_size=32, strategy=strategy)
        assert np.array_equal(clip.frames, base.frames), strategy
        assert clip.timestamps == base.timestamps


def test_dense_keyframes_seek_sparse_decode_in_one_pass(clips, monkeypatch):
    seeks = []
    real_seek = media._Video.seek
    monkeypatch.setattr(media._Video, "seek", lambda self, t: (seeks.append(t), real_seek(self, t))[1])
    load_video(clips["dense"], image_size=32)
    assert len(seeks) >= 8  # one per sampled second (the first is reached from the start)
    seeks.clear()
    load_video(clips["sparse"], image_size=32)
    assert seeks == []


def test_decoding_stops_after_last_needed_frame(clips, monkeypatch):
    seen = []
    real_frames = media._Video.frames

    def counting(self, targets=None):
        for f in real_frames(self, targets):
            seen.append(self.frame_time(f) if f.pts is None else f.pts * self.tb_f)
            yield f

    monkeypatch.setattr(media._Video, "frames", counting)
    clip = load_video(clips["sparse"], max_frames=2, image_size=32, strategy="stream")
    assert clip.timestamps == pytest.approx([2.5, 7.5], abs=1 / 30)
    assert max(seen) < 8.0  # the last target is 7.5 s of a 10 s video


def test_frames_to_tensor_normalises():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    frames[0] = 255
    frames[1, ..., 0] = 255  # second frame pure red
    x = frames_to_tensor(frames)
    assert tuple(x.shape) == (2, 3, 4, 4) and str(x.dtype) == "torch.float32"
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    assert np.allclose(x[0, :, 0, 0].numpy(), (1 - mean) / std, atol=1e-6)
    assert np.allclose(x[1, :, 0, 0].numpy(), (np.array([1, 0, 0]) - mean) / std, atol=1e-6)


def test_module_does_not_import_torch():
    code = "import sys, fvlm_cli.data.media; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_extension_sets():
    assert ".gif" in VIDEO_EXTS and ".gif" not in IMAGE_EXTS
    assert {".mp4", ".webm", ".mkv", ".mov", ".avi"} <= VIDEO_EXTS and {".jpg", ".png", ".webp"} <= IMAGE_EXTS
    assert all(e == e.lower() and e.startswith(".") for e in VIDEO_EXTS | IMAGE_EXTS)
    assert default_ext("gif") == ".gif"


def test_kind_dispatch(clips, tmp_path):
    png = write_image(tmp_path / "x.png", (20, 20), (1, 2, 3))
    assert load_media(png.read_bytes(), image_size=8).is_image
    assert not load_media(clips["dense"].read_bytes(), image_size=8).is_image
    # a gif is a video, also under a neutral name
    gif = write_video(tmp_path / "g.gif", index_frames(20, (32, 32)), fps=10, codec="gif")
    renamed = tmp_path / "g.bin"
    renamed.write_bytes(gif.read_bytes())
    assert load_media(renamed, image_size=8).frames.shape[0] == 2
    assert load_media(png, kind="image", image_size=8).is_image
    with pytest.raises(MediaError, match="dense.mp4: cannot read as an image"):
        load_media(clips["dense"], kind="image")
    with pytest.raises(ValueError):
        load_media(png, kind="audio")


# ---------------------------------------------------------------------------------------------------- errors


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    bad_jpg = tmp_path / "broken.jpg"
    bad_jpg.write_bytes(b"\xff\xd8\xff" + bytes(300))
    # header intact, every frame's data zeroed: opens, but nothing decodes
    nodec = write_video(tmp_path / "nodec.mkv", index_frames(20, (32, 32)), fps=10)
    data = bytearray(nodec.read_bytes())
    cluster = data.find(bytes.fromhex("1F43B675"))
    data[cluster + 4:] = bytes(len(data) - cluster - 4)
    nodec.write_bytes(bytes(data))
    return {
        "missing": (tmp_path / "missing.mp4", "no such file"),
        "empty": (empty, "empty file"),
        "garbage": (garbage, "not a readable video"),
        "text": (text, "not a video or image"),
        "broken-image": (bad_jpg, "cannot read as an image"),
        "audio-wav": (write_audio_only(tmp_path / "song.wav"), "no video stream"),
        "audio-m4a": (write_audio_only(tmp_path / "voice.m4a"), "no video stream"),
        "no-frames": (nodec, "no decodable video frames"),
        "directory": (tmp_path, "directory"),
    }


def test_clear_errors_name_the_file(tmp_path):
    for label, (path, reason) in _bad_inputs(tmp_path).items():
        with pytest.raises(MediaError) as info:
            load_media(path, image_size=16)
        msg = str(info.value)
        assert os.path.basename(path) in msg, label
        assert reason in msg, (label, msg)
        assert "\n" not in msg, label
        assert isinstance(info.value, FvlmError)


def test_errors_for_bytes_and_baseline(tmp_path):
    with pytest.raises(MediaError, match="<bytes>: empty"):
        load_media(b"")
    with pytest.raises(MediaError, match="<bytes>"):
        load_media(os.urandom(2000))
    with pytest.raises(MediaError, match="song.wav: no video stream"):
        decode_all_frames_baseline(write_audio_only(tmp_path / "song.wav"))
    with pytest.raises(MediaError, match="missing.mkv"):
        load_video(tmp_path / "missing.mkv")


def test_frame_folder_sampled_like_a_video(tmp_path):
    """MVBench's TVQA clips are folders of 3-fps frames: 30 frames = 10 s -> 10 frames at 1 fps."""
    from PIL import Image

    from fvlm_cli.data.media import load_media

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(30):
        Image.new("RGB", (80, 60), (i * 8, 0, 0)).save(folder / f"{i + 1:05d}.jpg")
    clip = load_media(folder, fps=1.0, image_size=32, kind="frames")
    assert clip.frames.shape == (10, 32, 32, 3) and not clip.is_image
    assert clip.duration == pytest.approx(10.0)
    assert clip.timestamps[0] == pytest.approx(0.0 + 1 / 3) and clip.timestamps[-1] == pytest.approx(9.0 + 1 / 3)
    reds = [int(f[..., 0].mean()) for f in clip.frames]
    assert reds == sorted(reds)  # in time order
    capped = load_media(folder, fps=1.0, max_frames=4, image_size=32, kind="frames")
    assert len(capped.timestamps) == 4 and capped.timestamps[-1] > 8


def test_a_truncated_video_is_an_error_not_copies_of_its_last_frame(tmp_path):
    """A download cut short keeps a header that promises the whole duration: past the last decodable frame the
    targets would all get that frame. That is a failure (MediaError), not a sample of repeated frames; a video whose
    last frame just sits a moment before its end is still fine."""
    import av

    from fvlm_cli.data.media import MediaError, load_media

    path = tmp_path / "long.mp4"
    c = av.open(str(path), "w", container_options={"movflags": "+faststart"})  # the index first, as web videos are
    s = c.add_stream("libx264", rate=10)
    s.width = s.height = 64
    s.pix_fmt = "yuv420p"
    for i in range(200):  # 20 s of noise (so the file is big enough to cut in the middle of its frames)
        frame = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        for pk in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    whole = load_media(str(path), fps=1.0, max_frames=32, image_size=32)
    assert len(whole.frames) == 20 and whole.timestamps[-1] == pytest.approx(19.5, abs=0.11)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(MediaError, match=r"cut.mp4: its frames end at \d+\.\d s but it lasts 19\.\d s"):
        load_media(str(cut), fps=1.0, max_frames=32, image_size=32)
