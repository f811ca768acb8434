"""The procedural dataset the offline speedrun trains and evaluates on (SPEC §8).

Each video shows 1-3 identical shapes (one colour, one shape) stepping in one direction across a 4 x 4 grid
of cells on a plain grey background. Colour and shape are visible in any frame, the count needs a look at the
whole frame, and the direction only shows across frames: start cells are random and paths stay inside the
frame, so the positions of left- and right-movers have the same distribution; only their order in time differs.
Shapes sit at the centre of a cell in every frame. At 64 px a cell is one 16-px patch of the tiny preset's
DINO, so a shape looks the same to its patch projection wherever it is; a from-scratch ViT does not learn to
tell shapes apart at any sub-patch offset in minutes (docs/LOG.md, issue 13).
Everything is a pure function of (seed, index): the same arguments give the same pixels and the same text.

Records from `samples_for` / `text_samples` are dicts with the SPEC §3.2 json fields that do not depend on
decoding (`id`, `source`, `kind`, `messages`, plus `chosen`/`rejected` for dpo and `question`, `options`,
`answer`, `category`, `cluster` for mcq) and `media`, the video path; precompute adds `frame_count` and
`timestamps` when it samples the video.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

SOURCE = "synthetic"
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
COUNTS: tuple[int, ...] = (1, 2, 3)
CATEGORIES: tuple[str, ...] = ("colour", "shape", "direction", "count")
LETTERS = "ABCD"

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
}
# unit step in image coordinates (x right, y down)
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
# fourth options for the attributes with only three values: never the answer, always offered
_EXTRA_SHAPE = "star"
_EXTRA_COUNT = 4

CAPTION_PROMPT = "Describe this video."
MCQ_SUFFIX = "Answer with the option's letter."


@dataclass
class SyntheticVideo:
    """One procedural video. frames: [T, H, W, 3] uint8 RGB, T = seconds * fps."""

    id: str
    frames: np.ndarray
    fps: float
    color: str
    shape: str
    direction: str
    count: int
    index: int = 0
    seed: int = 0


# ---------------------------------------------------------------------------------------------------- pixels


def _shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """[size, size] bool: the shape of radius r centred at (cx, cy); equal-ish areas so size says nothing."""
    ys, xs = np.ogrid[0:size, 0:size]  # broadcast [size, 1] x [1, size]
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = r * 0.886  # same area as the circle
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # pointing up, apex at cy - 1.25 r, base at cy + 0.85 r
        top, base = cy - 1.25 * r, cy + 0.85 * r
        half = (dy + 1.25 * r) / (2.1 * r) * 1.2 * r  # half-width grows linearly from the apex
        return (ys + 0.5 >= top) & (ys + 0.5 <= base) & (np.abs(dx) <= half)
    raise ValueError(f"unknown shape {shape!r}")


TASK = "grid"  # the generator's version: names the folders that cache its videos (was smooth motion until 2026-11-30)
GRID = 4  # cells per side: one tiny-DINO patch each at 64 px
TRAVEL = 2  # cells a shape steps over the clip; start cells leave room for it either way


def make_video(index: int, seed: int = 0, *, seconds: int = 8, fps: int = 4, size: int = 64) -> SyntheticVideo:
    """Video number `index` of the dataset with `seed`: deterministic, [seconds*fps, size, size, 3] uint8.

    The shapes step one cell at a time, TRAVEL cells over the clip (at 1 fps of 8 s: 2, 4 and 2 frames per cell),
    each in its own lane (row or column) across the motion; lanes and the start cell are random."""
    rng = np.random.default_rng([seed, index])
    color = COLORS[rng.integers(len(COLORS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    count = int(COUNTS[rng.integers(len(COUNTS))])
    background = np.full(3, rng.integers(25, 95), dtype=np.uint8)

    n = max(1, int(round(seconds * fps)))
    cell = size / GRID
    r = cell * rng.uniform(0.33, 0.38)  # fits its cell (a triangle is 2.1 r tall): shapes never touch
    sx, sy = _STEP[direction]
    sign = sx + sy  # +1 for right/down, -1 for left/up
    start = int(rng.integers(GRID - TRAVEL))
    if sign < 0:  # moving towards 0: start on the far side of the same range
        start = GRID - 1 - start
    lanes = rng.permutation(GRID)[:count]

    frames = np.empty((n, size, size, 3), np.uint8)
    rgb = np.array(COLOR_RGB[color], np.uint8)
    for i in range(n):
        frac = i / (n - 1) if n > 1 else 0.0
        along = (start + sign * int(round(TRAVEL * frac)) + 0.5) * cell
        img = np.empty((size, size, 3), np.uint8)
        img[:] = background
        for lane in lanes:
            across = (lane + 0.5) * cell
            cx, cy = (along, across) if sx else (across, along)
            img[_shape_mask(shape, cx, cy, r, size)] = rgb
        frames[i] = img
    return SyntheticVideo(id=f"syn{seed}-{index:06d}", frames=frames, fps=float(fps), color=color, shape=shape,
                          direction=direction, count=count, index=index, seed=seed)


# ---------------------------------------------------------------------------------------------------- text


def _plural(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def _describe(color: str, shape: str, direction: str, count: int) -> str:
    verb = "moves" if count == 1 else "move"
    return f"{_NUMBER_WORDS[count].capitalize()} {color} {_plural(shape, count)} {verb} {direction}."


def caption_for(v: SyntheticVideo) -> str:
    """'Two red circles move left.'"""
    return _describe(v.color, v.shape, v.direction, v.count)


def _options(category: str) -> list[str]:
    if category == "colour":
        return list(COLORS)
    if category == "shape":
        return list(SHAPES) + [_EXTRA_SHAPE]
    if category == "direction":
        return list(DIRECTIONS)
    return [str(c) for c in COUNTS] + [str(_EXTRA_COUNT)]


def _truth(v: SyntheticVideo, category: str) -> str:
    return {"colour": v.color, "shape": v.shape, "direction": v.direction, "count": str(v.count)}[category]


_MCQ_QUESTIONS = {
    "colour": "What colour are the moving shapes?",
    "shape": "What shape are the moving objects?",
    "direction": "In which direction do the shapes move?",
    "count": "How many shapes are in the video?",
}

_SFT_QA = {
    "colour": ("What colour are the shapes in this video?", lambda v: f"{v.color.capitalize()}."),
    "shape": ("What kind of shape is shown?", lambda v: f"{_plural(v.shape, v.count).capitalize()}."),
    "direction": ("Which way are they moving?", lambda v: f"{v.direction.capitalize()}."),
    "count": ("How many shapes can you see?", lambda v: f"{_NUMBER_WORDS[v.count].capitalize()}."),
}


def format_mcq(question: str, options: list[str]) -> str:
    """The user turn of an MCQ: the question, lettered options, and the answer instruction."""
    lines = [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)] + [MCQ_SUFFIX]
    return "\n".join(lines)


def samples_for(v: SyntheticVideo, video_path: str, *, seed: int = 0, shuffle_options: bool = False) -> list[dict]:
    """All records of one video: caption, sft (2-3 turns), one mcq per category, dpo.

    MCQ options are listed in a fixed order per category by default (A. red, B. green, ...), so the letter
    names what was seen and the benchmark measures visual grounding; a tiny model does not learn in-context
    option matching in CPU minutes (docs/LOG.md). With `shuffle_options`, answer letters cycle with
    (video index + category + seed), so over any 4 consecutive videos every category has each letter once.
    """
    rng = random.Random(f"{seed}/{v.seed}/{v.index}")
    base = {"source": SOURCE, "media": str(video_path)}
    caption = caption_for(v)
    records: list[dict] = [dict(base, id=f"{v.id}-caption", kind="caption", messages=[
        {"role": "user", "content": CAPTION_PROMPT}, {"role": "assistant", "content": caption}])]

    turns = rng.sample(CATEGORIES, rng.choice((2, 3)))
    messages = []
    for cat in turns:
        question, answer = _SFT_QA[cat]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer(v)}]
    records.append(dict(base, id=f"{v.id}-sft", kind="sft", messages=messages))

    for ci, cat in enumerate(CATEGORIES):
        truth = _truth(v, cat)
        others = [o for o in _options(cat) if o != truth]
        rng.shuffle(others)  # drawn either way, so the other records do not depend on the option order
        if shuffle_options:
            pos = (v.index + ci + seed) % 4
            options = others[:pos] + [truth] + others[pos:]
        else:
            options = _options(cat)
            pos = options.index(truth)
        question = _MCQ_QUESTIONS[cat]
        records.append(dict(base, id=f"{v.id}-mcq-{cat}", kind="mcq", question=question, options=options,
                            answer=LETTERS[pos], category=cat, cluster=v.id, messages=[
                                {"role": "user", "content": format_mcq(question, options)},
                                {"role": "assistant", "content": LETTERS[pos]}]))

    # rejected: the caption with exactly one attribute wrong
    attrs = {"color": v.color, "shape": v.shape, "direction": v.direction, "count": v.count}
    wrong = rng.choice(list(attrs))
    pool = {"color": COLORS, "shape": SHAPES, "direction": DIRECTIONS, "count": COUNTS}[wrong]
    attrs[wrong] = rng.choice([x for x in pool if x != attrs[wrong]])
    records.append(dict(base, id=f"{v.id}-dpo", kind="dpo", chosen=caption, rejected=_describe(**attrs),
                        messages=[{"role": "user", "content": CAPTION_PROMPT}]))
    return records


def write_video_file(v: SyntheticVideo, path, fps: Optional[float] = None) -> Path:
    """Encode `v` as mp4 (H.264 via PyAV; MPEG-4 part 2 where this PyAV has no libx264).

    fps: output frame rate; a rate other than v.fps repeats/drops frames by time, keeping the duration.
    """
    import av  # only writers need PyAV here; make_video and the text side stay numpy-only

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out_fps = float(fps or v.fps)
    n_src = len(v.frames)
    n_out = max(1, int(round(n_src / v.fps * out_fps)))
    codec = "libx264"
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        codec = "mpeg4"
    rate = Fraction(out_fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        h, w = v.frames.shape[1:3]
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "18"}
        for j in range(n_out):
            src = min(n_src - 1, int(j / out_fps * v.fps + 1e-6))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(v.frames[src]), format="rgb24")
            frame.pts = j
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------------- text only

_WORDS = ("apple", "river", "garden", "window", "planet", "candle", "forest", "pencil", "rocket", "basket",
          "mirror", "ladder", "orange", "silver", "bridge", "castle", "dragon", "island", "jacket", "kitten",
          "lemon", "marble", "needle", "oyster", "pepper", "rabbit", "saddle", "tunnel", "violin", "wizard",
          "cat", "dog", "sun", "moon", "tree", "book", "fish", "bird", "cloud", "stone")
_OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark", "open": "closed",
              "happy": "sad", "early": "late", "full": "empty", "old": "new", "wet": "dry", "left": "right"}
_MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple",
          ("red", "white"): "pink", ("black", "white"): "grey"}


def _text_qa(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(9)
    if kind == 0:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        a, b = sorted((rng.randint(1, 60), rng.randint(1, 60)), reverse=True)
        return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."
    if kind == 3:
        w = rng.choice(_WORDS)
        return f"How many letters are in the word '{w}'?", f"The word '{w}' has {len(w)} letters."
    if kind == 4:
        w = rng.choice(_WORDS)
        return f"Spell '{w}' backwards.", f"{w[::-1]}"
    if kind == 5:
        w, o = rng.choice(sorted(_OPPOSITES.items()))
        return f"What is the opposite of '{w}'?", f"The opposite of '{w}' is '{o}'."
    if kind == 6:
        a = rng.randint(1, 998)
        return f"What number comes after {a}?", f"{a + 1} comes after {a}."
    if kind == 7:
        (c1, c2), mix = rng.choice(sorted(_MIXES.items()))
        return f"What colour do you get by mixing {c1} and {c2}?", f"Mixing {c1} and {c2} gives {mix}."
    words = rng.sample(_WORDS, 3)
    return (f"Put these words in alphabetical order: {', '.join(words)}.", ", ".join(sorted(words)) + ".")


def text_samples(n: int, seed: int = 0) -> list[dict]:
    """`n` short text-only chats (arithmetic, spelling, word facts) for text retention; deterministic by seed."""
    rng = random.Random(f"text/{seed}")
    out = []
    for i in range(n):
        q, a = _text_qa(rng)
        out.append({"id": f"text{seed}-{i:06d}", "source": SOURCE, "kind": "text", "media": None,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out
