"""Training: the loop and its parts (configuration, set-up, data order, loss, parameters, runtime, sharding, checkpoints, logs, skips, provenance), the run folder, CLIP fine-tuning."""
