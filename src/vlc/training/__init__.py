"""Run-level training machinery that Lightning plugs in: atomic checkpoint files, RNG state in checkpoints."""
