"""The two entry points' answers to config mistakes, as a user sees them (subprocesses: ~10 s each,
most of it importing torch and Lightning)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vlc.run import CONFIG_DIR

ROOT = Path(__file__).parents[1]
COMPRESSORS = sorted(p.stem for p in (CONFIG_DIR / "compressor").glob("*.yaml"))


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLC_LOG_DIR": str(tmp_path / "logs"), "VLC_DATA_DIR": str(tmp_path / "data")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_unknown_compressor_lists_the_choices(tmp_path):
    """Hydra's own message already names the group and lists every option: kept as it is."""
    out = run_cli(tmp_path, "compressor=nope")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "Could not find 'compressor/nope'" in out.stderr
    listed = out.stderr.split("Available options in 'compressor':")[1]
    assert all(f"\t{name}\n" in listed for name in COMPRESSORS)
    assert not (tmp_path / "data").exists()  # nothing was generated or built


def test_cli_invalid_ratio_is_one_paragraph_exit_2(tmp_path):
    out = run_cli(tmp_path, "compressor.ratio=0", "experiment=vst_ratio16")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        "error: invalid config (1 problem): compressor.ratio=0 (vst): raw tokens per beacon at inference, an "
        "integer in 1..window (window=160); Video-XL uses 16, and a ratio above the window would leave a window "
        "without a beacon. See docs/robustness.md."
    )
    assert not (tmp_path / "data").exists()
