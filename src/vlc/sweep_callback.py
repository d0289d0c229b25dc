"""A Hydra callback that leaves a sweep's report (``vlc-report``) in the sweep directory.

Enabled from a config, as ``experiment=ablation_compressors`` and ``hparams_search=optuna`` do::

    hydra:
      callbacks:
        report:
          _target_: vlc.sweep_callback.SweepReport

When a job ends it records the job's status in ``<job dir>/status.json`` (COMPLETED, or FAILED with
the exception) and rewrites the report; at the end of the sweep it writes it once more. The report is
rewritten after every job because Hydra's basic sweeper stops at the first failed job and then never
calls ``on_multirun_end``: the report it leaves still lists the failed job. Outside a multirun the
callback does nothing. A report that cannot be written is logged, never raised: the runs are done,
and ``vlc-report SWEEP_DIR`` rebuilds it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vlc.evaluation.report import STATUS_FILE, write_report

log = logging.getLogger("vlc.report")


def _is_multirun(config: DictConfig) -> bool:
    mode = OmegaConf.select(config, "hydra.mode")
    return mode == RunMode.MULTIRUN or str(mode) in ("MULTIRUN", "RunMode.MULTIRUN")


class SweepReport(Callback):
    """out_dir: where to write the report; null = the sweep directory (``hydra.sweep.dir``)."""

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        job_dir = OmegaConf.select(config, "hydra.runtime.output_dir")
        if job_dir:
            status = {"status": job_return.status.name}
            if job_return.status == JobStatus.FAILED:
                error = job_return._return_value  # the exception; .return_value would re-raise it
                status["error"] = f"{type(error).__name__}: {error}"[:2000]
            try:
                (Path(job_dir) / STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")
            except OSError as e:
                log.warning("could not write %s: %s", Path(job_dir) / STATUS_FILE, e)
        self._report(config, final=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report(config, final=True)

    def _report(self, config: DictConfig, final: bool) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        try:
            written = write_report(sweep_dir, self.out_dir)
        except Exception:  # noqa: BLE001 - the sweep's runs matter more than its report
            log.exception("vlc-report: could not write the report of %s; rebuild it with `vlc-report %s`",
                          sweep_dir, sweep_dir)
            return
        if final:
            log.info("sweep report: %s", ", ".join(str(p) for p in written.values()))
