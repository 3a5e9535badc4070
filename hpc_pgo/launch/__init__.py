"""Launching: submitit executors (local, Slurm), checkpointable fold tasks, requeue."""
