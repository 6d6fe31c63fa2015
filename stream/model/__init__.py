"""The online model: River pipelines, the trainer, signed snapshots, the served version."""
