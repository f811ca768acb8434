"""Media, shards, sources, tokenisation and loading: source -> shard -> loader -> batch."""
