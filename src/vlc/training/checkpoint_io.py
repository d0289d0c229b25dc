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
        _remove_stale_temps(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as error:  # a full disk, a read-only directory: say which file, once
            raise OSError(error.errno, f"writing checkpoint {path} failed: {error.strerror or error} "
                                       f"(the previous {path.name} is kept)") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(path.parent)


def _remove_stale_temps(path: Path) -> None:
    """Temp files of this checkpoint left by a process that was killed mid-write (its pid is gone)."""
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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
