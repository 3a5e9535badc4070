"""Models: SNN, MLPs, the scGPT wrapper, T2T-ViT registered in timm, fusion heads."""
