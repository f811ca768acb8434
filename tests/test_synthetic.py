"""The procedural speedrun dataset (SPEC §8): deterministic, balanced, consistent with its pixels."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from fvlm_cli.data import synthetic as syn
from fvlm_cli.data.media import load_media
from fvlm_cli.data.synthetic import (COLOR_RGB, COLORS, DIRECTIONS, SHAPES, caption_for, make_video, samples_for,
                                     text_samples, write_video_file)

SEC_FIELDS = {"id", "source", "kind", "messages"}


def _mask(v, i: int) -> np.ndarray:
    """[H, W] bool: pixels of the shapes' colour in frame i."""
    rgb = np.array(COLOR_RGB[v.color], int)
    return np.abs(v.frames[i].astype(int) - rgb).sum(axis=2) < 30


def test_deterministic_by_seed():
    a, b = make_video(7, seed=3), make_video(7, seed=3)
    assert np.array_equal(a.frames, b.frames) and caption_for(a) == caption_for(b)
    assert samples_for(a, "x.mp4", seed=1) == samples_for(b, "x.mp4", seed=1)
    assert not np.array_equal(make_video(7, seed=4).frames, a.frames)
    assert not np.array_equal(make_video(8, seed=3).frames, a.frames)
    assert text_samples(20, seed=5) == text_samples(20, seed=5) != text_samples(20, seed=6)


def test_shape_and_sizes():
    v = make_video(0)
    assert v.frames.shape == (32, 64, 64, 3) and v.frames.dtype == np.uint8 and v.fps == 4
    assert make_video(0, seconds=2, fps=3, size=32).frames.shape == (6, 32, 32, 3)
    assert v.color in COLORS and v.shape in SHAPES and v.direction in DIRECTIONS and v.count in (1, 2, 3)


def test_caption_matches_metadata():
    words = {1: "One", 2: "Two", 3: "Three"}
    for i in range(40):
        v = make_video(i)
        cap = caption_for(v)
        noun = v.shape if v.count == 1 else v.shape + "s"
        verb = "moves" if v.count == 1 else "move"
        assert cap == f"{words[v.count]} {v.color} {noun} {verb} {v.direction}."


def test_pixels_show_the_metadata():
    """Colour present, count = connected blobs, direction = how the shapes' centroid moves over the clip."""
    for i in range(40):
        v = make_video(i)
        first, last = _mask(v, 0), _mask(v, len(v.frames) - 1)
        assert first.sum() > 20 * v.count
        # shapes never touch: count the blobs along the axis across the motion
        axis = 1 if v.direction in ("left", "right") else 0  # rows differ for horizontal motion
        occupied = first.any(axis=axis)
        blobs = int(occupied[0]) + int(np.sum(occupied[1:] & ~occupied[:-1]))
        assert blobs == v.count, (i, blobs, v.count)
        ys0, xs0 = np.nonzero(first)
        ys1, xs1 = np.nonzero(last)
        dx, dy = xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()
        moved = {"right": dx, "left": -dx, "down": dy, "up": -dy}
        assert moved[v.direction] > 8 and abs(dy if v.direction in ("left", "right") else dx) < 1, (i, dx, dy)


def test_shapes_sit_on_the_patch_grid():
    """Every shape is centred in a cell of the 4 x 4 grid (one 16-px patch of the tiny DINO at 64 px) in every
    frame, and looks the same in each: a frame's pixels are the first frame's, moved by whole cells."""
    for i in range(40):
        v = make_video(i)
        cells = set()
        for k in range(len(v.frames)):
            m = _mask(v, k)
            assert m.sum() > 20 * v.count
            for cy in range(syn.GRID):
                for cx in range(syn.GRID):
                    patch = m[16 * cy:16 * cy + 16, 16 * cx:16 * cx + 16]
                    if patch.any():
                        assert not patch[0].any() and not patch[-1].any() and not patch[:, 0].any() \
                            and not patch[:, -1].any(), (i, k)  # inside its cell, never across a patch border
                        cells.add(patch.tobytes())
        assert len(cells) == 1, i  # one pattern: the same shape at the same offset in every cell it visits
        sx, sy = syn._STEP[v.direction]
        shift = (np.nonzero(_mask(v, len(v.frames) - 1))[1 if sx else 0].mean()
                 - np.nonzero(_mask(v, 0))[1 if sx else 0].mean())
        assert shift == pytest.approx(16 * syn.TRAVEL * (sx + sy))


def test_single_frame_does_not_reveal_direction():
    """Without knowing a frame's time, its shape positions say nothing about the direction: over the clips,
    positions of left- and right-movers have the same distribution (mirror images about the centre)."""
    xs = {"left": [], "right": []}
    for i in range(120):
        v = make_video(i, seconds=4, fps=2)
        if v.direction in xs:
            xs[v.direction] += [np.nonzero(_mask(v, k))[1].mean() for k in range(len(v.frames))]
    left, right = np.array(xs["left"]), np.array(xs["right"])
    assert len(left) > 100 and len(right) > 100
    assert abs(left.mean() - 32) < 2 and abs(right.mean() - 32) < 2
    assert abs(left.std() - right.std()) < 2
    # ... while the first frame alone, with its time known, would: the motion is the only cue to use
    firsts = {d: [np.nonzero(_mask(v, 0))[1].mean() for v in map(make_video, range(60)) if v.direction == d]
              for d in ("left", "right")}
    assert np.mean(firsts["right"]) < 32 < np.mean(firsts["left"])


def test_records_follow_the_shard_schema():
    v = make_video(5)
    recs = samples_for(v, "/data/v5.mp4")
    kinds = Counter(r["kind"] for r in recs)
    assert kinds == {"caption": 1, "sft": 1, "mcq": 4, "dpo": 1}
    assert len({r["id"] for r in recs}) == len(recs)
    for r in recs:
        assert SEC_FIELDS <= r.keys() and r["media"] == "/data/v5.mp4" and r["source"] == "synthetic"
        assert all(m["role"] in ("user", "assistant") and m["content"] for m in r["messages"])
    cap = next(r for r in recs if r["kind"] == "caption")
    assert cap["messages"] == [{"role": "user", "content": "Describe this video."},
                               {"role": "assistant", "content": caption_for(v)}]
    sft = next(r for r in recs if r["kind"] == "sft")
    assert len(sft["messages"]) in (4, 6)
    assert [m["role"] for m in sft["messages"]] == ["user", "assistant"] * (len(sft["messages"]) // 2)
    dpo = next(r for r in recs if r["kind"] == "dpo")
    assert dpo["chosen"] == caption_for(v) and dpo["rejected"] != dpo["chosen"]
    assert dpo["messages"] == [{"role": "user", "content": "Describe this video."}]


def test_mcq_correct_and_unambiguous():
    for i in range(30):
        v = make_video(i)
        truth = {"colour": v.color, "shape": v.shape, "direction": v.direction, "count": str(v.count)}
        for r in (r for r in samples_for(v, "v.mp4") if r["kind"] == "mcq"):
            opts = r["options"]
            assert len(opts) == 4 and len(set(opts)) == 4
            assert opts["ABCD".index(r["answer"])] == truth[r["category"]]
            assert r["cluster"] == v.id
            user, assistant = r["messages"]
            assert user["content"].startswith(r["question"])
            assert user["content"].endswith("Answer with the option's letter.")
            assert f"{r['answer']}. {truth[r['category']]}" in user["content"]
            assert assistant == {"role": "assistant", "content": r["answer"]}


def test_mcq_fixed_option_order_letter_names_the_answer():
    for i in range(40):
        v = make_video(i, seconds=1, fps=1, size=16)
        for r in samples_for(v, "v.mp4"):
            if r["kind"] == "mcq":
                assert r["options"] == syn._options(r["category"])  # the same order for every video
                assert r["options"][syn.LETTERS.index(r["answer"])] == syn._truth(v, r["category"])


def test_mcq_answer_letters_balanced_when_shuffled():
    letters = Counter()
    per_category = {c: Counter() for c in syn.CATEGORIES}
    for i in range(200):
        for r in samples_for(make_video(i, seconds=1, fps=1, size=16), "v.mp4", shuffle_options=True):
            if r["kind"] == "mcq":
                letters[r["answer"]] += 1
                per_category[r["category"]][r["answer"]] += 1
    assert letters == {"A": 200, "B": 200, "C": 200, "D": 200}
    assert all(set(c.values()) == {50} for c in per_category.values())


def test_attributes_roughly_balanced():
    vids = [make_video(i, seconds=1, fps=1, size=16) for i in range(400)]
    for attr, values in (("color", COLORS), ("shape", SHAPES), ("direction", DIRECTIONS), ("count", (1, 2, 3))):
        counts = Counter(getattr(v, attr) for v in vids)
        assert set(counts) == set(values)
        assert min(counts.values()) > 400 / len(values) * 0.7, (attr, counts)


def test_dpo_rejected_differs_in_exactly_one_attribute():
    def parse(text):
        m = re.fullmatch(r"(One|Two|Three) (\w+) (\w+?)s? moves? (\w+)\.", text)
        return m.groups()

    for i in range(40):
        dpo = next(r for r in samples_for(make_video(i), "v.mp4") if r["kind"] == "dpo")
        a, b = parse(dpo["chosen"]), parse(dpo["rejected"])
        assert sum(x != y for x, y in zip(a, b)) == 1, (dpo["chosen"], dpo["rejected"])


def test_written_mp4_decodes_through_the_media_policy(tmp_path):
    v = make_video(3)
    p = write_video_file(v, tmp_path / "v3.mp4")
    clip = load_media(p, image_size=64)
    assert clip.duration == pytest.approx(8.0)
    assert clip.frames.shape == (8, 64, 64, 3)
    # frame k (t = k + 0.5 s) is source frame floor(4 * t) = 4k + 2; colours survive the codec
    for k, frame in enumerate(clip.frames):
        assert np.abs(frame.astype(int) - v.frames[4 * k + 2]).mean() < 4
    # a higher container frame rate keeps the duration and the content
    p30 = write_video_file(v, tmp_path / "v3_30.mp4", fps=30)
    clip30 = load_media(p30, image_size=64)
    assert clip30.frames.shape == (8, 64, 64, 3)
    assert np.abs(clip30.frames.astype(int) - clip.frames.astype(int)).mean() < 3


def test_text_samples():
    recs = text_samples(50, seed=0)
    assert len(recs) == 50 and len({r["id"] for r in recs}) == 50
    for r in recs:
        assert r["kind"] == "text" and r["media"] is None
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    plus = [r for r in recs if " plus " in r["messages"][0]["content"]]
    assert plus
    for r in plus:  # the answers are right
        a, b = map(int, re.findall(r"\d+", r["messages"][0]["content"]))
        assert r["messages"][1]["content"] == f"{a} plus {b} is {a + b}."
