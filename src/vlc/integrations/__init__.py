"""vlc inside other harnesses (``lmms``: lmms-eval)."""
