"""Training: the driver (`train`), one epoch (`engine`), the run's typed state and checkpoint, the warm-up."""
