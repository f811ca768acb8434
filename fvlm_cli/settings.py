"""The config schema: every YAML key fvlm reads, with its default and one line of help.

`RunConfig` is what `fvlm train`, `fvlm dpo` and `fvlm speedrun` read; the model section alone is
what a preset file (`configs/model/*.yaml`) holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from fvlm_cli.config import field

Mode = Literal["coarse_only", "coarse_fine", "autoregressive"]
MODES: tuple[str, ...] = ("coarse_only", "coarse_fine", "autoregressive")
Order = Literal["video_first", "question_first"]


@dataclass
class ModelConfig:
    name: str = field("tiny", help="preset name this model section came from")
    llm: str = field("HuggingFaceTB/SmolLM2-135M-Instruct", help="LLM Hub id (weights and tokenizer)")
    dino: str = field("facebook/dinov2-small", help="DINOv2 Hub id")
    llm_config: Optional[dict[str, Any]] = field(None, help="inline LlamaConfig fields; set = build from config, no download")
    dino_config: Optional[dict[str, Any]] = field(None, help="inline Dinov2Config fields; set = build from config, no download")
    tokenizer: str = field("", help="tokenizer Hub id or folder; 'tiny' = the offline tiny tokenizer; empty = same as llm")
    pretrained: bool = field(True, help="load base weights of llm/dino (false = random init from their configs)")
    query_dim: int = field(384, help="dimension of the foveated query vectors")
    visual_scale: float = field(0.14, help="multiplies every projected visual token (matches LLM embedding std)")
    image_size: int = field(224, help="square frame size fed to DINO")
    gradient_checkpointing: bool = field(False, help="recompute LLM activations in backward (saves memory)")
    attn_implementation: str = field("sdpa", help="LLM attention kernel: sdpa | eager | flash_attention_2")


@dataclass
class MediaConfig:
    fps: float = field(1.0, help="frames sampled per second of video")
    max_frames: int = field(64, help="cap; longer videos are sampled uniformly over their whole length")
    image_size: int = field(224, help="shorter side resized to this, then centre-cropped square")
    image_frames: int = field(8, help="an image is replicated to this many frames (the training distribution)")


@dataclass
class ChatConfig:
    system_prompt: str = field("You are a helpful AI assistant.", help="explicit system message of every sample")
    default_prompt: str = field("Describe this video.", help="user prompt when none is given (caption)")
    order: Order = field("video_first", help="video_first: [visual, text]; question_first: [system+user, visual, answer]")
    question_first_ratio: float = field(0.0, help="training: fraction of samples put in question_first order")


@dataclass
class ShardSet:
    path: str = field("", help="shard directory (with manifest.json), glob/brace pattern of .tar files, http(s):// "
                               "pattern, pipe:COMMAND or hf://datasets/OWNER/NAME/PATTERN")
    weight: float = field(1.0, help="mixture weight among the non-text shard sets")


@dataclass
class DataConfig:
    train: list[ShardSet] = field([], help="shard sets mixed for training")
    text: list[ShardSet] = field([], help="text-only shard sets (text retention)")
    text_fraction: float = field(0.14, help="fraction of training samples drawn from the text shard sets")
    val: Optional[str] = field(None, help="fixed validation shards (directory or pattern)")
    val_samples: int = field(64, help="validation samples used at each evaluation")
    batch_size: int = field(8, help="samples per micro-batch per rank")
    num_workers: int = field(2, help="DataLoader workers per rank")
    max_text_tokens: int = field(512, help="text tokens per sample after truncation")
    replicate_images: bool = field(True, help="replicate single-frame images to media.image_frames")
    frame_budget: int = field(0, help="if > 0, cap frames per micro-batch (frame-budget batching)")
    shuffle_buffer: int = field(256, help="sample shuffle buffer size")
    seed: int = field(0, help="data order seed")
    retries: int = field(5, help="retries of a shard read that failed transiently (5xx, reset, truncated stream)")
    retry_backoff: float = field(1.0, help="seconds before the first retry; doubled on each further retry")
    cache_dir: Optional[str] = field(None, help="download remote shards once into this folder (later epochs read it)")
    verify: bool = field(False, help="check each shard's sha256 against its manifest while reading")


@dataclass
class GroupConfig:
    lr: float = field(3e-5, help="peak learning rate of this parameter group")
    lr_end: Optional[float] = field(None, help="converging schedule: the LR this group ends at (default: schedule floor)")
    frozen: bool = field(False, help="freeze this group (no gradients, not in the optimizer)")
    weight_decay: float = field(0.01, help="AdamW weight decay (never applied to norms, biases, queries)")


@dataclass
class OptimConfig:
    connector: GroupConfig = field(None, help="projections + queries")
    dino: GroupConfig = field(None, help="DINOv2 encoder")
    llm: GroupConfig = field(None, help="language model")
    betas: list[float] = field([0.9, 0.95], help="AdamW betas")
    eps: float = field(1e-8, help="AdamW epsilon")
    fused: bool = field(True, help="fused AdamW where torch has the kernel (CUDA, CPU); skips non-finite steps on the device")
    grad_clip: float = field(1.0, help="clip global grad norm to this (0 = off)")
    schedule: Literal["cosine", "converging", "constant"] = field("cosine", help="LR schedule")
    warmup: float = field(0.03, help="warmup as a fraction of total steps")
    min_lr_ratio: float = field(0.1, help="cosine floor as a fraction of peak")

    def __post_init__(self):
        for name in ("connector", "dino", "llm"):
            if getattr(self, name) is None:
                setattr(self, name, GroupConfig())


@dataclass
class TrainConfig:
    stage: int = field(1, help="1 captioning/alignment (loss on all text), 2 VL-SFT, 3 video SFT (answer-only loss)")
    mode: Mode = field("coarse_fine", help="forward mode used for training")
    init_from: Optional[str] = field(None, help="model folder / checkpoint / run dir to start from (must exist)")
    steps: int = field(100, help="optimizer steps")
    grad_accum: int = field(1, help="micro-batches per optimizer step")
    seed: int = field(0, help="global seed")
    device: str = field("auto", help="auto | cpu | cuda | cuda:N")
    dtype: str = field("auto", help="auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32")
    compile: bool | Literal["off", "encoder", "model"] = field(
        "off", help="torch.compile: off | encoder (DINO patch pass + query walk) | model (the whole training forward); "
                    "true = encoder")
    compile_backend: str = field("inductor", help="torch.compile backend for train.compile (aot_eager: capture "
                                                  "without code generation, to tell a capture problem from a codegen one)")
    tf32: bool = field(True, help="allow TF32 matmuls on Ampere+")
    log_every: int = field(10, help="console/metrics line every N steps")
    eval_every: int = field(100, help="validation every N steps (0 = only at the end)")
    eval_modes: list[str] = field(["coarse_only", "coarse_fine"], help="modes evaluated on the validation set")
    save_every: int = field(100, help="checkpoint every N steps (0 = only at the end)")
    keep_last: int = field(2, help="checkpoints kept besides the best")
    best_metric: str = field("val/loss_coarse_fine", help="validation metric that picks the best checkpoint (lower is better)")
    max_bad_steps: int = field(5, help="consecutive non-finite losses before stopping with a checkpoint")
    wandb: bool = field(False, help="log to Weights & Biases (WANDB_MODE=offline works)")
    wandb_project: str = field("fvlm", help="wandb project")

    def __post_init__(self):
        if isinstance(self.compile, bool):  # the earlier boolean switch (YAML also reads `off` as false)
            self.compile = "encoder" if self.compile else "off"


@dataclass
class DPOConfig:
    beta: float = field(0.1, help="DPO temperature")
    reference: Literal["frozen", "precomputed"] = field("frozen", help="reference log-probs: frozen copy of the initial model, or precomputed once")


@dataclass
class RunConfig:
    """Everything one training run reads."""

    model: ModelConfig = field(None, help="architecture and base weights")
    media: MediaConfig = field(None, help="frame sampling policy")
    chat: ChatConfig = field(None, help="chat template options")
    data: DataConfig = field(None, help="shards and batching")
    optim: OptimConfig = field(None, help="optimizer and schedule")
    train: TrainConfig = field(None, help="loop settings")
    dpo: DPOConfig = field(None, help="DPO settings (fvlm dpo)")
    out_dir: str = field("runs/run", help="run directory")

    def __post_init__(self):
        for name, cls in (("model", ModelConfig), ("media", MediaConfig), ("chat", ChatConfig), ("data", DataConfig),
                          ("optim", OptimConfig), ("train", TrainConfig), ("dpo", DPOConfig)):
            if getattr(self, name) is None:
                setattr(self, name, cls())


@dataclass
class DownloadConfig:
    timeout: float = field(30.0, help="seconds of silence (connect/read) before a download attempt is abandoned")
    max_mb: float = field(512.0, help="size cap per downloaded file (MiB); bigger files are failures")
    retries: int = field(3, help="extra attempts after a 5xx/429, a timeout or a dropped connection")
    backoff: float = field(1.0, help="seconds before the first retry, doubled each time")
    max_seconds: float = field(600.0, help="longest one download attempt may take in all (a trickling server is "
                                           "abandoned and retried)")


@dataclass
class PrecomputeConfig:
    """Everything `fvlm precompute` reads (YAML via --config, flags, --set)."""

    source: str = field("", help="source name (see `fvlm precompute --help`)")
    input: Optional[str] = field(None, help="local path or Hub dataset id (synthetic: none)")
    out: str = field("", help="output directory: *.tar, manifest.json, failures.jsonl")
    workers: Optional[int] = field(None, help="decoding processes (default min(4, cpus); 0 = in-process)")
    part: str = field("0/1", help="i/n: keep samples whose index % n == i (split across machines)")
    media: MediaConfig = field(None, help="frame sampling policy (fps, max_frames, image_size)")
    shard_size: int = field(1000, help="samples per tar")
    limit: Optional[int] = field(None, help="use only the first N samples of the source (before --part)")
    seed: int = field(0, help="seed for sources that sample or generate")
    split: Optional[str] = field(None, help="dataset split/subset/config where the source has several")
    cache_dir: Optional[str] = field(None, help="where Hub downloads and tar.gz extractions go (never inside the "
                                                "input; default ~/.cache/fvlm)")
    max_fail_ratio: Optional[float] = field(None, help="fail (exit 2) when failures / samples exceeds this")
    retry_failed: bool = field(False, help="redo finished shards that recorded failures")
    verify: bool = field(False, help="on resume, re-hash every finished shard against its sha256 (default: trust a "
                                     "shard whose size and modification time are as recorded)")
    jpeg_quality: int = field(90, help="JPEG quality of stored frames")
    download: DownloadConfig = field(None, help="http(s) fetching of media URLs")
    extra: dict[str, Any] = field({}, help="source-specific knobs (--set key=value)")

    def __post_init__(self):
        if self.media is None:
            self.media = MediaConfig()
        if self.download is None:
            self.download = DownloadConfig()
