"""`fvlm precompute`: sources -> webdataset shards. The driver is `driver.run_precompute`; see its module."""

from fvlm_cli.data.precompute.driver import all_failed_message, default_workers, run_config, run_precompute
from fvlm_cli.data.precompute.plan import STATE_DIR, ShardTask, input_label, media_label, parse_part, shard_name
from fvlm_cli.data.precompute.worker import write_shard

__all__ = ["STATE_DIR", "ShardTask", "all_failed_message", "default_workers", "input_label", "media_label",
           "parse_part", "run_config", "run_precompute", "shard_name", "write_shard"]
