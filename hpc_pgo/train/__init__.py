"""Training loops: one cross-validation fold; MLP-A mix-up pretraining. Knows nothing of Slurm."""
