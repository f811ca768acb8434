"""Inference options: what `fvlm caption` and `fvlm serve` read (defaults live here, once; no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fvlm_cli.config import field


@dataclass
class GenerateConfig:
    mode: str = field("autoregressive", help="coarse_only | coarse_fine | autoregressive")
    prompt: Optional[str] = field(None, help="question or instruction (none: the model's caption prompt)")
    max_new_tokens: int = field(64, help="generation length cap")
    temperature: float = field(0.0, help="0 = greedy")
    top_p: float = field(1.0, help="nucleus sampling mass (with temperature > 0)")
    repetition_penalty: float = field(1.0, help="> 1 discourages repeats")
    order: Optional[str] = field(None, help="video_first | question_first (none: the model's)")
    seed: int = field(0, help="sampling seed")


@dataclass
class CaptionConfig:
    generate: GenerateConfig = field(None, help="decoding options")
    batch_size: int = field(8, help="inputs generated together")
    workers: int = field(2, help="background decoding processes per device (0 = decode in the main process)")
    prefetch: int = field(4, help="decoded inputs each worker keeps ready")
    decode_timeout: float = field(300.0, help="seconds a worker may spend on one input (a shard: one sample) before it "
                                  "counts as hung and is restarted; twice on the same input makes it an error; 0 = no limit")
    out: Optional[str] = field(None, help="JSONL file results are appended to; a re-run skips inputs already in it")
    gpus: int = field(1, help="split the inputs across N devices (one process each; with --device cpu: N CPU processes)")

    def __post_init__(self):
        if self.generate is None:
            self.generate = GenerateConfig()


@dataclass
class ServeConfig:
    host: str = field("127.0.0.1", help="address to listen on (0.0.0.0 = every interface)")
    port: int = field(8000, help="TCP port")
    allow_local_files: bool = field(False, help="accept file:// URLs and local paths in requests (trusted clients only)")
    max_body_mb: float = field(32.0, help="largest request body accepted (MB); media inline as data: URIs count")
    max_media_mb: float = field(64.0, help="largest media file fetched from an http(s) URL (MB)")
    max_tokens: int = field(256, help="cap on max_tokens a request may ask for")
    default_max_tokens: int = field(64, help="max_tokens when a request gives none")
    batch_size: int = field(4, help="requests generated together when they arrive at once")
    batch_wait_ms: float = field(10.0, help="how long the batcher waits for more requests before running a batch")
    max_queue: int = field(64, help="requests waiting at most; more get 503")
    fetch_timeout: float = field(20.0, help="seconds to fetch media from a URL")
    cors_origins: list[str] = field([], help="browser origins allowed to call the API from another page "
                                             "(CORS; '*' = any); none by default")
