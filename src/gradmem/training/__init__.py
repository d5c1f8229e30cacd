"""Training: the Trainer, its compiled step, data parallelism, and `start_run`, the one start-up
sequence of every entry point."""
