"""Error types. Every user-facing mistake is an `FvlmError`: the CLI prints one red line and exits 2."""


class FvlmError(Exception):
    """A user error: bad input, missing file, bad config. Exit status 2, no traceback."""

    exit_code = 2


class ConfigError(FvlmError):
    """A config key or value is wrong."""


class MediaError(FvlmError):
    """A video or image cannot be read."""


class ModelLoadError(FvlmError):
    """A model cannot be found, reached, or its weights do not match the architecture."""


class DataError(FvlmError):
    """Shards or dataset inputs are missing or malformed."""


class CorruptShard(DataError):
    """A shard whose bytes are bad (a broken tar, fewer samples than its manifest says) after the retries: training
    skips the rest of it and goes on."""


class TrainingError(FvlmError):
    """Training cannot continue (non-finite losses, bad resume state)."""

