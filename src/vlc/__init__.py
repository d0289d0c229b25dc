"""vlc: compare how video LLMs compress long visual sequences, on one shared backbone."""

__version__ = "0.1.0"
