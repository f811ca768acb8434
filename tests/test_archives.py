"""Archives read in place (fvlm_cli/data/archives.py) and the media policy over them: zip members as file
objects, split zip parts as one stream, tar.gz extracted once outside the input, windows, frame lists."""

from __future__ import annotations

import io
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from media_factory import index_frames, read_index, write_video

from fvlm_cli.data import archives
from fvlm_cli.data.media import load_frames, load_images, load_media, load_video
from fvlm_cli.errors import DataError, MediaError


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """4 s at 10 fps, each frame painting its index."""
    return write_video(tmp_path_factory.mktemp("clip") / "idx.mp4", frames=index_frames(40, (64, 64)), fps=10)


def split(path: Path, cuts: list[int]) -> list[Path]:
    data = path.read_bytes()
    bounds = [0, *cuts, len(data)]
    parts = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        part = path.with_name(f"{path.stem}_part{'abcdefgh'[i // 8]}{'abcdefgh'[i % 8]}")
        part.write_bytes(data[a:b])
        parts.append(part)
    return parts


def test_concat_file_reads_and_seeks_like_the_joined_bytes(tmp_path):
    data = bytes(random.Random(0).randrange(256) for _ in range(5000))
    whole = tmp_path / "x.zip"
    whole.write_bytes(data)
    parts = split(whole, [1, 1700, 4999])
    assert [p.name for p in parts] == ["x_partaa", "x_partab", "x_partac", "x_partad"]
    f = archives.ConcatFile(parts)
    rng = random.Random(1)
    for _ in range(200):
        pos, n = rng.randrange(5100), rng.randrange(3000)
        f.seek(pos)
        assert f.read(n) == data[pos:pos + n] and f.tell() == min(pos + n, 5000) or pos >= 5000
    f.seek(-10, io.SEEK_END)
    assert f.read() == data[-10:]
    groups, rest = archives.split_zip_groups([tmp_path / "y.zip", *reversed(parts)])
    assert groups == [tuple(parts)] and rest == [tmp_path / "y.zip"]


def test_a_split_zip_member_decodes_like_the_file_itself(tmp_path, clip):
    whole = tmp_path / "OpenVid_part7.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        zf.write(clip, "videos/idx.mp4")
        zf.writestr("notes/readme.txt", "x" * 3000)
    parts = split(whole, [whole.stat().st_size // 2])
    whole.unlink()  # only the parts exist, as on the Hub; nothing joins them on disk
    index = archives.index_zips([tuple(parts)])
    member = index["videos/idx.mp4"]
    assert str(member) == "OpenVid_part7_partaa+OpenVid_part7_partab:videos/idx.mp4"
    with archives.open_member(member) as f:
        got = load_media(f, fps=1, image_size=32)
    want = load_video(clip, fps=1, image_size=32)
    assert np.array_equal(got.frames, want.frames) and got.timestamps == want.timestamps
    assert got.source == str(member)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OpenVid_part7_partaa", "OpenVid_part7_partab"]


def test_frame_folders_inside_a_zip_are_indexed_and_sampled_at_their_rate(tmp_path):
    from fixtures_datasets import png_bytes

    with zipfile.ZipFile(tmp_path / "tvqa.zip", "w") as zf:
        for i in range(9):
            zf.writestr(f"tvqa/frames_fps3_hq/clip/{i + 1:05d}.jpg", png_bytes((i * 25, 0, 0)))
    member = archives.index_zips([(tmp_path / "tvqa.zip",)])["tvqa/frames_fps3_hq/clip"]
    assert member.is_dir and len(archives.frame_members(member)) == 9
    read = []
    frames = [lambda n=n: read.append(n) or archives.read_member(member, n) for n in archives.frame_members(member)]
    clip = load_frames(frames, fps=1, image_size=8, name=str(member))  # 9 frames at 3 fps = 3 s -> 3 frames
    assert clip.timestamps == [0.333333, 1.333333, 2.333333] and len(read) == 3  # only the picked ones read
    inside = load_frames(frames, fps=2, image_size=8, window=(1.0, 2.0))
    assert inside.timestamps == [1.0, 1.666667] and inside.window == (1.0, 2.0)
    assert [int(round(f[..., 0].mean() / 25)) for f in inside.frames] == [3, 5]


def test_a_window_samples_only_inside_it(clip):
    whole = load_video(clip, fps=1, image_size=32)
    assert [read_index(f) for f in whole.frames] == [5, 15, 25, 35] and whole.window is None
    part = load_video(clip, fps=1, image_size=32, window=(1.0, 3.0))
    assert part.timestamps == [1.5, 2.5] and [read_index(f) for f in part.frames] == [15, 25]
    assert part.window == (1.0, 3.0)
    clipped = load_media(clip, fps=2, image_size=32, window=(3.0, 99.0))  # clipped to the video's end
    assert clipped.window == (3.0, 4.0) and clipped.timestamps == [3.2, 3.7]
    with pytest.raises(MediaError, match="outside the video"):
        load_video(clip, image_size=32, window=(10.0, 12.0))


def test_several_images_are_one_clip_in_order(tmp_path):
    from fixtures_datasets import png_bytes

    clip = load_images([png_bytes((255, 0, 0)), png_bytes((0, 255, 0)), png_bytes((0, 0, 255))], image_size=8)
    assert clip.frames.shape == (3, 8, 8, 3) and clip.is_image
    assert [int(np.argmax(f.reshape(-1, 3).mean(0))) for f in clip.frames] == [0, 1, 2]


def test_tar_gz_is_extracted_once_outside_the_input_and_links_are_refused(tmp_path, clip):
    data = tmp_path / "input" / "sub"
    data.mkdir(parents=True)
    tar = data / "sub_videos_1.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(clip, arcname="academic_source/a.mp4")
    cache = tmp_path / "cache"
    dest, members = archives.extract_tar_cached(tar, cache, tmp_path / "input")
    assert members == ["academic_source/a.mp4"] and (dest / "academic_source/a.mp4").read_bytes() == clip.read_bytes()
    assert sorted(p.name for p in data.iterdir()) == ["sub_videos_1.tar.gz"]
    again, _ = archives.extract_tar_cached(tar, cache, tmp_path / "input")
    assert again == dest and len(list(cache.iterdir())) == 1
    with pytest.raises(DataError, match="inside the input"):
        archives.extract_tar_cached(tar, tmp_path / "input" / "c", tmp_path / "input")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        info = tarfile.TarInfo("../escape.mp4")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="cannot read archive"):
        archives.extract_tar_cached(evil, cache)
    assert not (cache.parent / "escape.mp4").exists() and not list(cache.glob("evil*"))


def test_a_broken_zip_is_one_data_error(tmp_path):
    (tmp_path / "videos_chunked_01.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a readable zip"):
        archives.index_zips([(tmp_path / "videos_chunked_01.zip",)])
