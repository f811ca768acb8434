"""`BenchConfig`: every key `fvlm bench` reads (the --config YAML schema; flags bind to it with `flag`).

A light module (no torch): the CLI reads it at import time to build the bench flags' help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from fvlm_cli.config import field

BENCHMARKS = {  # name -> kind of shards it reads
    "val-loss": "loss", "mvbench": "mcq", "video-mme": "mcq", "pope": "mcq", "scienceqa": "mcq", "mlvu": "mcq",
    "captioning": "caption", "synthetic": "mcq",
}
PROTOCOLS = ("fvlm", "reference", "lmms-eval")


@dataclass
class BenchConfig:
    """Everything `fvlm bench` reads (the --config YAML schema; flags override it)."""

    benchmarks: list[str] = field([], help=f"benchmark names: {', '.join(BENCHMARKS)}")
    model: str = field("sanps/fVLM-135M", help="Hub id, model folder, checkpoint, run dir, or preset")
    protocol: Literal["fvlm", "reference", "lmms-eval"] = field(
        "fvlm", help="MCQ scoring protocol: fvlm | reference (the released table's) | lmms-eval (SmolVLM2's)")
    mode: str = field("all", help="coarse_only | coarse_fine | autoregressive | all (or a comma list)")
    method: str = field("auto", help="MCQ: loglik | generate | both | auto (fvlm: both, reference: loglik, "
                                     "lmms-eval: generate)")
    limit: Optional[int] = field(None, help="first N questions (samples) of each benchmark")
    out: str = field("runs/bench", help="output dir (results.json, samples.jsonl, results.md); re-run to resume")
    order: Optional[Literal["video_first", "question_first"]] = field(None, help="prompt order: video_first | question_first (none: the model's)")
    data: dict[str, str] = field({}, help="shard dir per benchmark name (default: data/<name>)")
    batch_size: int = field(8, help="questions scored together")
    max_new_tokens: int = field(8, help="MCQ generate (fvlm protocol): answer length cap")
    caption_max_new_tokens: int = field(64, help="captioning: caption length cap")
    meteor: bool = field(True, help="captioning: compute METEOR (needs Java; one JVM start per mode)")
    answer_format: Literal["letter", "text"] = field("letter", help="fvlm loglik continuation: the option letter or its text")
    val_loss_stage: int = field(2, help="val-loss targets: 1 = all text tokens, 2/3 = answer tokens + <|im_end|>")
    device: str = field("auto", help="auto | cpu | cuda | cuda:N (under --gpus: each rank its own GPU)")
    dtype: str = field("auto", help="auto | bf16 | fp32")
