"""The errors of a run that the command line reports in one line (besides
`experiments.config.ConfigError`, for configs)."""

from __future__ import annotations

import pathlib

__all__ = ["RunError", "RunInterrupted"]


class RunError(Exception):
    """A run that cannot start, resume or be shown as asked (a run folder that cannot be made,
    a corrupt file, a missing optional package); the message names the file or package and
    says what to do. The command line prints it without a traceback."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run: a `KeyboardInterrupt` that knows the run folder (None
    when it was not made yet), so that the command line can print how to finish the run."""

    def __init__(self, run_dir: pathlib.Path | None):
        super().__init__(str(run_dir) if run_dir is not None else "")
        self.run_dir = run_dir
