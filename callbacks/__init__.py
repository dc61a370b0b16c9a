"""Lightning callbacks, one per file: memory checkpointing, admission, tier migration, Safe@k logging."""
