"""Engine: DeepSpeed set-up, the modulated optimizer step, checkpoints."""
