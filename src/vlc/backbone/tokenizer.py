"""Tokenizers: the real ones by name or path, the tiny one built locally with no download."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

VIDEO_TOKEN = "<video>"
# Qwen2's chat markers, so the tiny model and Qwen2-7B read the same prompt template.
PAD_TOKEN, BOS_CHAT, EOS_CHAT = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_CHAT, EOS_CHAT, VIDEO_TOKEN]

# The tiny tokenizer's merges are learnt from this fixed text, so every build is identical.
_CORPUS = """
system user assistant You are a helpful assistant. Answer with the option's text.
What color is the shape that appears briefly in the video? Which color appeared first?
How many times does the red shape appear? When does the red circle appear? Options:
red green blue yellow magenta cyan orange purple white black gray circle square shape
one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 seconds second
Time s: frame frames video clip appears appeared first last start end from to between
The video shows a person a car a dog a ball moving left right up down in the scene.
Best option: ( A ) B ) C ) D ) E ) Question: Answer: yes no true false
"""


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with vlc's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_CHAT,
        additional_special_tokens=[BOS_CHAT, VIDEO_TOKEN],
    )


def load_tokenizer(name_or_path: str | None = None, vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` for a hub name or a local directory; the tiny one for None."""
    if name_or_path is None:
        return build_tiny_tokenizer(vocab_size)
    local = Path(name_or_path).expanduser()
    if str(name_or_path).startswith((".", "/", "~")) and not local.is_dir():
        raise FileNotFoundError(f"tokenizer.name_or_path: no tokenizer directory at {local}")
    tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name_or_path)
    if VIDEO_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
