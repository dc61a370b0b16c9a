"""Experiment tracking (W&B and the report files): where a result came from.

- ``provenance``: package versions, git commit, machine and seed of a run
- ``run_identity``: a W&B run's name, group, tags and job type from its resolved config
- ``lineage``: content-addressed W&B artifacts (shards, checkpoints, memory snapshots, reports),
  declared as used or logged, online and offline alike
"""
