"""nerfstudio's training engine with our promises kept (the trainer)."""
