"""Evaluate a checkpoint: ``python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt``."""

from vlc.cli import eval_main

if __name__ == "__main__":
    eval_main()
