"""Checkpoint files that are either the old one or the new one, never half of either.

Lightning's ``TorchCheckpointIO`` serialises the checkpoint into memory, then writes it through an
fsspec transaction: for local paths fsspec writes a ``tempfile.mkstemp()`` file in the system temp
directory and ``shutil.move``s it into place. When the temp directory is on another filesystem than
the run directory (a tmpfs ``/tmp``, a scratch disk) that move is a copy, so a crash mid-copy leaves
a truncated ``last.ckpt``; it also holds the whole checkpoint in memory twice and never fsyncs.
``AtomicCheckpointIO`` writes next to the target, fsyncs, and ``os.replace``s it in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<path>.tmp-<pid>`` in the same directory, fsync, then ``os.replace`` (atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        if "://" in str(path):  # remote storage: keep Lightning's own transaction
            return super().save_checkpoint(checkpoint, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
