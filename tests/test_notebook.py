"""notebooks/compression_tradeoffs.ipynb: stored without outputs, and runs top to bottom on a small
fake sweep (tests/test_report.py's) with two NIAH grids, its interpretation computed from that data."""

from __future__ import annotations

import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from vlc.run import CONFIG_DIR

from test_report import fake_sweep

NOTEBOOK = CONFIG_DIR.parent / "notebooks" / "compression_tradeoffs.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"stored output in: {cell.source[:60]!r}"
    assert nb.metadata.kernelspec.name == "python3"
    assert "parameters" in code[0].metadata.get("tags", [])


def test_the_python3_kernel_is_this_python():
    # The python3 kernel spec says "python"; jupyter_client runs it as the interpreter running the
    # tests (the venv's), so the notebook imports the same vlc.
    assert "python3" in KernelSpecManager().find_kernel_specs()
    assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(str(out.get("data", {}).get("text/markdown", "")))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_notebook_runs_on_a_fake_sweep(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    sweep = fake_sweep(tmp_path / "sweep")
    for job, accuracy in (("0", [1.0, 0.5, 0.25, 1.0]), ("4", [1.0, 0.75, 0.5, 0.0])):
        rows = ["length,depth,accuracy,n"] + [f"{length},{depth},{a},4" for (length, depth), a in
                                              zip([(16, 0.0), (16, 1.0), (32, 0.0), (32, 1.0)], accuracy)]
        (sweep / job / "niah.csv").write_text("\n".join(rows) + "\n")
    (sweep / "niah_qformer_global.csv").write_text("length,depth,accuracy,n\n16,0.0,0.25,4\n32,0.0,0.5,4\n")
    (sweep / "lengths.csv").write_text("variant,acc_64,acc_256\nnone_baseline,0.7,0.4\npool_baseline,0.5,0.45\n"
                                       "vst_ratio16,0.6,0.3\n")
    monkeypatch.setenv("VLC_SWEEP_DIR", str(sweep))
    monkeypatch.delenv("VLC_NIAH_DIR", raising=False)
    monkeypatch.delenv("VLC_BENCH_CSV", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    run_in = {"metadata": {"path": str(NOTEBOOK.parent)}}  # the kernel's working directory
    NotebookClient(nb, timeout=150, kernel_name="python3", resources=run_in).execute()

    text = _text(nb)
    assert "11 runs, 9 ok, 6 variants" in text
    # computed from the fake numbers (tests/test_report.py FAKE)
    assert "Most accurate: **none_baseline** (0.550, 512 visual tokens, 516 KV tokens = 516 KiB)" in text
    assert "Most accuracy per KV token: **vst_ratio16**" in text
    assert "Pareto-optimal against KV cache after prefill: vst_ratio16 (0.520 at 36,864), none_baseline (0.550" in text
    assert ("accuracy first falls more than 0.05 at 8.1x fewer KV tokens (diffp: 0.350); "
            "still within it at higher ratios: vst_ratio16 (14.3x)") in text
    assert "2 of 11 runs failed: diffp (seed 1: RuntimeError: boom), moviechat" in text
    assert "none_baseline (seed 0): mean accuracy 0.69 over 4 cells; worst at 32 frames, depth 0 (0.25)" in text
    assert "vst_ratio16 (seed 0): mean accuracy 0.56" in text  # job 4: vst_ratio16, seed 0
    assert "qformer_global: mean accuracy 0.38 over 2 cells" in text  # a niah_<variant>.csv names its variant
    # accuracy against length (lengths.csv): pool drops 0.05, none 0.30, vst 0.30 (the first of the largest)
    assert "From 64 to 256 frames, **pool_baseline** loses least (0.500 → 0.450)" in text
    assert "Most accurate at 256 frames: **pool_baseline** (0.450)" in text
    # tokens vs frames, counted from the real compressors: pool keeps N/4 per frame, qformer 32 in all
    assert "a fixed token budget, whatever the length: qformer_global" in text
    assert "tokens growing with the frames: none_baseline, pool_baseline, vst_ratio16" in text
    assert "at 64 frames the fewest tokens" in text
    figures = sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))
    assert figures == 4  # Pareto fronts, NIAH heatmaps, accuracy vs length, tokens vs frames
    errors = [out for c in nb.cells for out in c.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
