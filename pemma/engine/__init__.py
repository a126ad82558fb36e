"""Training, evaluation, checkpoints and throughput: one loop for every method."""
