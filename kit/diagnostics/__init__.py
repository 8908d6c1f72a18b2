"""Looking at the data and the model: augmented batches, the worst out-of-fold errors, class-activation maps and the
learning-rate range test. Each writes its picture into a folder the caller names and returns the paths, so the
commands (``kit show``, ``kit lr-find``) and the run page can embed them.

The floor sits above prediction (it reuses a fold's model and images as ``kit predict`` reads them) and below the
report (which embeds its pictures).
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["write_run_pictures"]

log = logging.getLogger(__name__)


def write_run_pictures(run_dir: str | Path, out_dir: str | Path, n_errors: int = 8, cams: bool = True,
                       device: str = "auto", data_dir: str | Path | None = None) -> list[Path]:
    """A run's pictures for its page: ``errors.png`` (and ``errors_tta.png`` after kit predict) and, when
    pytorch-grad-cam is installed, ``cam.png`` of the default images; the paths written, in that order."""
    from kit.diagnostics.errors import write_error_grids

    paths = [g.path for g in write_error_grids(run_dir, out_dir, n_errors, data_dir)]
    if cams:
        from kit.diagnostics.cam import explain, library_missing, write_cam_grid

        missing = library_missing()
        if missing:
            log.warning("no cam.png: %s", missing)
            return paths
        paths.append(write_cam_grid(explain(run_dir, device=device, data_dir=data_dir), out_dir).path)
    return paths
