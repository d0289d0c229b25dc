"""Compressors: each one file, each a small ``nn.Module`` that follows the contract of
``vlc.compressors.base`` (a token compressor maps FrameTokens to FrameTokens; a cache compressor
also owns the LLM prefill). ``build_compressor`` is the only way a config becomes a compressor.
"""

from vlc.compressors.base import (
    CacheCompressor,
    Compressor,
    UntrustedTargetError,
    build_compressor,
    trust,
)

__all__ = ["CacheCompressor", "Compressor", "UntrustedTargetError", "build_compressor", "trust"]
