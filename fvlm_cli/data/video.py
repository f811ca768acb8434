"""Video decoding for the media policy (SPEC §3.1): open, time, seek, and pick the frame on screen at each target.

Keyframe positions come from the container index (mp4/mov/avi/mkv/webm) or from demuxing the first seconds
of packets (cheap: no decoding). A target is reached by seeking to its keyframe when that skips enough
frames; otherwise decoding runs on in order. So dense keyframes give a seek per frame and sparse ones one
in-order pass; either way only the picked frames are converted and decoding stops right after the last one.
A source may be a path, bytes, or a seekable binary file object (a zip member read in place).
"""

from __future__ import annotations

import bisect
import io
import math
from collections import deque
from typing import Any, Iterator, Optional

import av
import numpy as np

from fvlm_cli.data.media_base import (_EPS, Clip, Source, Window, _check_file, _frame_to_square, _is_stream,
                                      _one_line, _source_name, window_targets)
from fvlm_cli.errors import MediaError

# Decoder threads per video (0 = FFmpeg's choice, about one per core). A precompute driver running one
# process per core sets this to 1 so that processes do not oversubscribe the CPU.
DECODE_THREADS = 0

# a seek (flush + refill of the decoder, index lookup) costs about this many decoded frames
_SEEK_COST_FRAMES = 6
# packets demuxed (not decoded) to estimate keyframe spacing when the container has no index
_PROBE_PACKETS = 1500
_PROBE_SECONDS = 12.0
# packets demuxed ahead of the decoder to prove a frame is superseded (covers B-frame reordering)
_LOOKAHEAD_PACKETS = 16
# frames without a keyframe after a seek before giving up on seeking in this video
_MAX_SKIP_AFTER_SEEK = 600

# FFmpeg demuxers that turn any text into a "video": never what a user meant
_NOT_VIDEO_FORMATS = frozenset({"tty", "ansi", "bin", "xbin", "idf", "adp"})



def _open(src: Source) -> tuple[Any, str]:
    path = _check_file(src)
    name = _source_name(src)
    if _is_stream(src):
        src.seek(0)  # reopening (rewind) starts over
        target = src
    else:
        target = str(path) if path is not None else io.BytesIO(bytes(src))
    try:
        try:
            container = av.open(target, mode="r", metadata_errors="ignore")
        except TypeError:  # a PyAV that no longer takes the argument: its default
            container = av.open(target, mode="r")
    except Exception as e:  # av.error.* and OSError: not a container FFmpeg recognises
        raise MediaError(f"{name}: not a readable video, unknown format or corrupt ({_one_line(e)})") from e
    return container, name


def _video_stream(container, name: str):
    if container.format.name in _NOT_VIDEO_FORMATS:
        raise MediaError(f"{name}: not a video or image file (FFmpeg would read it as {container.format.long_name})")
    for stream in container.streams.video:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue  # cover art of an audio file is not a video
        return stream
    kinds = sorted({s.type for s in container.streams}) or ["no streams"]
    raise MediaError(f"{name}: no video stream (contains {', '.join(kinds)})")


def _parse_hms(text: str) -> Optional[float]:
    """'00:01:02.500000000' (Matroska DURATION tag) -> 62.5."""
    try:
        h, m, s = text.strip().split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except (ValueError, AttributeError):
        return None


class _Video:
    """One opened video stream: timing, keyframe map, seeking and in-order frame iteration."""

    def __init__(self, src: Source):
        self._src, self._thread_type = src, "AUTO"
        self.container, self.name = _open(src)
        try:
            self._setup_stream()
        except BaseException:
            self.container.close()
            raise
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.frame_dt = 1.0 / float(rate) if rate else 1.0 / 25.0
        sar = self.stream.sample_aspect_ratio
        self.sar = float(sar) if sar else 1.0
        st = self.stream.start_time
        self.start = st * self.tb_f if st is not None and self.tb_f else 0.0
        self.rotation = 0
        self.has_pts = True
        self.decode_errors = 0
        self._kf: list[float] = []   # keyframe positions, seconds from start
        self._kf_exact = False       # _kf covers the whole video (from an index)
        self._kf_probe_end = 0.0     # else: _kf is known up to here, then the spacing estimate
        self._kf_spacing = math.inf
        self._next_dt = self.frame_dt
        self._clock: Optional[float] = None

    def _setup_stream(self):
        self.stream = _video_stream(self.container, self.name)
        self.set_threading(self._thread_type)

    def set_threading(self, thread_type: str):
        """Decoder threading; PyAV opens the decoder on the first packet, so this works until then."""
        self._thread_type = thread_type
        if not self.stream.codec_context.is_open:
            self.stream.codec_context.thread_type = thread_type
            self.stream.codec_context.thread_count = DECODE_THREADS
        self.tb = self.stream.time_base
        self.tb_f = float(self.tb) if self.tb else 0.0

    def _rewind(self):
        """Back to the first packet: reopen (works for every demuxer, unlike seeking to 0 in raw streams)."""
        self.container.close()
        self.container, _ = _open(self._src)
        self._setup_stream()
        self._clock = None

    def close(self):
        self.container.close()

    # -- timing ----------------------------------------------------------------------------------------

    def metadata_duration(self) -> Optional[float]:
        s = self.stream
        if s.duration and self.tb_f:
            return s.duration * self.tb_f
        for key in ("DURATION", "duration"):
            d = _parse_hms(s.metadata.get(key, "")) if key in s.metadata else None
            if d:
                return d
        if self.container.duration:
            d = self.container.duration / av.time_base
            cs = self.container.start_time
            if cs is not None and self.start:
                d -= max(0.0, self.start - cs / av.time_base)
            return d if d > 0 else None
        return None

    def scan_duration(self) -> Optional[float]:
        """Last packet's end time by demuxing every packet (no decoding): for streams without metadata."""
        last_end, count, dur_sum = None, 0, 0.0
        for packet in self.container.demux(self.stream):
            if packet.size == 0:
                continue
            count += 1
            pd = packet.duration * self.tb_f if packet.duration and self.tb_f else self.frame_dt
            dur_sum += pd
            if packet.pts is not None and self.tb_f:
                end = packet.pts * self.tb_f - self.start + pd
                last_end = end if last_end is None else max(last_end, end)
        self._rewind()
        if last_end is not None:
            return last_end
        return dur_sum if count else None

    def frame_time(self, frame) -> float:
        """Seconds from the video start; streams without pts (raw elementary streams) count durations."""
        if frame.pts is not None and self.tb_f:
            t = frame.pts * self.tb_f - self.start
        else:
            self.has_pts = False
            t = 0.0 if self._clock is None else self._clock + self._next_dt
        dur = frame.duration
        self._next_dt = dur * self.tb_f if dur and self.tb_f else self.frame_dt
        self._clock = t
        return t

    # -- keyframes ---------------------------------------------------------------------------------------

    def _seekable(self) -> bool:
        return "gif" not in (self.container.format.name or "")  # the GIF demuxer cannot seek

    def map_keyframes(self, interval: float):
        """Fill the keyframe list from the index, or from demuxing the first seconds of packets."""
        if not self._seekable():
            return
        entries = self.stream.index_entries
        if len(entries) < 2:
            # Matroska reads its cues lazily, on the first seek
            try:
                self.container.seek(0)
                entries = self.stream.index_entries
            except av.error.FFmpegError:  # raw elementary streams cannot seek
                self._rewind()
                return
        if len(entries) >= 2:
            ts = sorted(e.timestamp * self.tb_f - self.start for e in entries if e.is_keyframe)
            if ts:
                self._kf, self._kf_exact = ts, True
                return
        # no index (e.g. MPEG-TS): demux the first seconds without decoding and measure the spacing
        window = max(_PROBE_SECONDS, 3 * interval)
        kf, t = [], 0.0
        for i, packet in enumerate(self.container.demux(self.stream)):
            if packet.size == 0 or packet.pts is None:
                if packet.size and packet.pts is None:
                    self._rewind()
                    return  # no timestamps: no seeking
                continue
            t = packet.pts * self.tb_f - self.start
            if packet.is_keyframe:
                kf.append(t)
            if i >= _PROBE_PACKETS or t > window:
                break
        self._rewind()
        kf.sort()
        self._kf, self._kf_probe_end = kf, t
        if len(kf) >= 2:
            self._kf_spacing = float(np.median(np.diff(kf)))

    def seek_gain(self, target: float, pos: float) -> float:
        """Seconds of decoding a seek to target's keyframe saves over decoding on from `pos`."""
        if self._kf_exact or target <= self._kf_probe_end:
            i = bisect.bisect_right(self._kf, target + _EPS) - 1
            return self._kf[i] - pos if i >= 0 else 0.0
        if math.isfinite(self._kf_spacing):
            return (target - pos) - self._kf_spacing / 2  # the keyframe lands on average half a spacing back
        return 0.0

    def planned_seeks(self, targets: list[float], min_gain: float) -> int:
        """How many of `targets` a seek would reach (decoding on from the previous target otherwise)."""
        pos, count = 0.0, 0
        for t in targets:
            count += self.seek_gain(t, pos) > min_gain
            pos = t
        return count

    def can_seek(self) -> bool:
        return self._seekable() and self.has_pts and (bool(self._kf) or math.isfinite(self._kf_spacing))

    # -- decoding ----------------------------------------------------------------------------------------

    def seek(self, t: float):
        """Position the demuxer on the keyframe at or before `t` (seconds from start)."""
        ticks = int(math.floor((t + self.start) / self.tb_f)) if self.tb_f else 0
        self.container.seek(ticks, stream=self.stream, backward=True)
        self._clock = None

    def frames(self, targets: Optional[list[float]] = None) -> Iterator[Any]:
        """Decoded frames from the demuxer's current position, in presentation order; corrupt packets skipped.

        With `targets` (increasing seconds), a packet is decoded with skip_frame=NONREF (the decoder drops it
        if no other frame references it) when a packet demuxed soon after it shows a frame later than it
        but still not after the next target: such a frame can never be the one on screen at a target.
        """
        ctx = self.stream.codec_context
        skipping = targets is not None and bool(self.tb_f)
        queue: deque = deque()
        mode = None

        def decode(packet):
            nonlocal mode
            if skipping:
                want = "NONREF" if self._superseded(packet, queue, targets) else "DEFAULT"
                if want != mode:
                    ctx.skip_frame = mode = want
            try:
                return packet.decode()
            except av.error.FFmpegError:
                self.decode_errors += 1
                return []

        for packet in self.container.demux(self.stream):
            queue.append(packet)
            if len(queue) > _LOOKAHEAD_PACKETS:
                yield from decode(queue.popleft())
        while queue:
            yield from decode(queue.popleft())
        if mode is not None:
            ctx.skip_frame = "DEFAULT"

    def _superseded(self, packet, following, targets: list[float]) -> bool:
        """True when a packet in `following` has a frame in (this packet's time, next target]."""
        if packet.pts is None or not packet.size:
            return False
        p = packet.pts * self.tb_f - self.start
        j = bisect.bisect_left(targets, p - _EPS)
        horizon = targets[j] + _EPS if j < len(targets) else math.inf
        for q in following:
            if q.pts is not None and q.size:
                qt = q.pts * self.tb_f - self.start
                if p + _EPS < qt <= horizon:
                    return True
        return False


_TRUNCATED_S = 2.0  # frames ending this long (or 10% of the video) before the header's duration: a damaged file


def _pick(video: _Video, targets: list[float], image_size: int, strategy: str) -> tuple[list[np.ndarray], list[float]]:
    """For each target time the frame on screen then (last pts <= t), converted; decoding stops after the last.

    targets: increasing seconds from the start. Before working on a target, seek to its keyframe if that
    skips more frames than a seek costs (always, with strategy "seek"); otherwise decode on.
    """
    n = len(targets)
    out: list[np.ndarray] = []
    times: list[float] = []
    last_src, last_arr = None, None

    def resolve(frame, t: float):
        nonlocal last_src, last_arr
        if frame is not last_src:  # targets increase, so only the latest converted frame can repeat
            if last_src is None:
                video.rotation = frame.rotation or _legacy_rotation(video.stream)
            last_src, last_arr = frame, _frame_to_square(frame, image_size, video.rotation, video.sar)
        out.append(last_arr)
        times.append(t)

    seek_ok = strategy != "stream" and video.can_seek()
    min_gain = _SEEK_COST_FRAMES * video.frame_dt
    if seek_ok and (strategy == "seek" or 2 * video.planned_seeks(targets, min_gain) >= n):
        # frame threading keeps a frame per thread in flight: after every seek those are decoded in vain
        video.set_threading("SLICE")
    frames = video.frames(targets)
    pos = 0.0                  # time of the last decoded frame (0: decoder at the start of the file)
    prev, prev_t = None, 0.0   # latest frame with time <= the current target, in this decode run
    check_seek, seeked_to, retries, skipped = True, None, 0, 0
    while len(out) < n:
        t = targets[len(out)]
        if check_seek:
            check_seek = False
            if seek_ok and (strategy == "seek" or video.seek_gain(t, pos) > min_gain):
                try:
                    video.seek(t)
                    frames, prev, seeked_to, retries = video.frames(targets), None, t, 0
                except av.error.FFmpegError:  # a failed seek leaves the demuxer anywhere: decode from the start
                    seek_ok, seeked_to = False, None
                    video._rewind()
                    frames, prev = video.frames(targets), None
        frame = next(frames, None)
        if frame is not None and seeked_to is not None and prev is None and not _starts_gop(frame):
            # some demuxers (MPEG-TS) seek to any packet: frames before the next keyframe would be garbage
            skipped += 1
            if skipped > _MAX_SKIP_AFTER_SEEK:  # no keyframes to land on (intra refresh): decode from the start
                seek_ok, seeked_to, skipped = False, None, 0
                video._rewind()
                frames, prev = video.frames(targets), None
            continue
        skipped = 0
        if frame is not None:
            ft = video.frame_time(frame)
            pos = ft
        # a seek that landed after the target (an index on dts, a coarse index) or past the end: go back further
        landed_late = frame is None or ft > t + _EPS
        if prev is None and seeked_to is not None and landed_late:
            retries += 1
            seeked_to -= max(video.frame_dt * 2 ** retries, (ft - t) if frame is not None else 0.0)
            try:
                if seeked_to <= 0 or retries > 6:
                    raise EOFError  # reopening is the one exact way back to the first frame
                video.seek(seeked_to)
            except (EOFError, av.error.FFmpegError):
                video._rewind()
                seeked_to = None
            frames = video.frames(targets)
            continue
        if frame is None:  # end of stream: the remaining targets show the last frame decoded
            if prev is None and not out:
                break
            if targets[-1] - pos > max(_TRUNCATED_S, 0.1 * targets[-1]):  # not a last frame held a moment longer
                raise MediaError(f"{video.name}: its frames end at {pos:.1f} s but it lasts {targets[-1]:.1f} s by "
                                 f"its header: truncated or damaged (the rest would be copies of the last frame)")
            fill, fill_t = (prev, prev_t) if prev is not None else (last_src, times[-1])
            while len(out) < n:
                resolve(fill, fill_t)
            break
        seeked_to = None
        if prev is None and ft > t + _EPS:  # the target is before the video's first frame: show that frame
            prev, prev_t = frame, ft
        while len(out) < n and ft > targets[len(out)] + _EPS:
            resolve(prev, prev_t)
            check_seek = True
        prev, prev_t = frame, ft
    if not out:
        raise MediaError(f"{video.name}: no decodable video frames")
    return out, times


def _starts_gop(frame) -> bool:
    """A frame decoding can start from: flagged key, or intra (open-GOP I-frames are not flagged key)."""
    return bool(frame.key_frame) or int(frame.pict_type) == int(av.video.frame.PictureType.I)


def _legacy_rotation(stream) -> int:
    """Rotation from the old 'rotate' stream tag (clockwise degrees) as a counter-clockwise angle."""
    try:
        return -int(float(stream.metadata.get("rotate", 0)))
    except ValueError:
        return 0


def load_video(src: Source, *, fps: float = 1.0, max_frames: int = 64, image_size: int = 224,
               strategy: str = "auto", window: Window = None) -> Clip:
    """Sample a video per the policy (module docstring) into a Clip [T, S, S, 3].

    strategy: auto (seek where keyframes make it pay, else decode on in order) | seek (before every
    frame; for tests) | stream (one in-order pass). All three return the same frames.
    """
    if strategy not in ("auto", "seek", "stream"):
        raise ValueError(f"strategy must be auto, seek or stream, got {strategy!r}")
    video = _Video(src)
    try:
        duration = video.metadata_duration()
        if not duration:
            duration = video.scan_duration()
        targets, used = window_targets(duration, fps, max_frames, window)
        span = (used[1] - used[0]) if used else (duration or 0.0)
        interval = span / len(targets)
        if strategy != "stream":
            video.map_keyframes(interval)
        frames, times = _pick(video, targets, image_size, strategy)
    except av.error.FFmpegError as e:
        raise MediaError(f"{video.name}: cannot decode video ({_one_line(e)})") from e
    finally:
        video.close()
    return Clip(frames=np.stack(frames), timestamps=[round(t, 6) for t in times], is_image=False,
                duration=duration, source=video.name, window=used)
