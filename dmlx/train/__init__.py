"""The data-parallel training loop, its state, optimiser and checkpoints."""
