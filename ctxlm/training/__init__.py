"""Training: phase 1 (the ContextBlock alone), phase 2 (the TokenBlock on C*), resumable checkpoints and training curves."""
