"""The stage trainer: `motif train STAGE_FILE` on every rank of a PyTorchJob (or torchrun, or torchx)."""
