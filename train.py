"""Train a video LLM with the composed config: ``python train.py experiment=vst_ratio16``."""

from vlc.cli import train_main

if __name__ == "__main__":
    train_main()
