"""experiments: config-driven runs of kseq, `kseq run configs/NAME.yaml`.

`load_config` reads a YAML file into frozen dataclasses, `run_experiment` runs its task into a
fresh run folder. The command line (`experiments.cli`) only parses and calls these, so a
notebook can do the same.
"""

from experiments.config import RunConfig as RunConfig
from experiments.config import load_config as load_config
from experiments.context import RunContext as RunContext
from experiments.runner import resume_experiment as resume_experiment
from experiments.runner import run_experiment as run_experiment
from experiments.show import show_run as show_run

__all__ = [
    "RunConfig",
    "RunContext",
    "load_config",
    "resume_experiment",
    "run_experiment",
    "show_run",
]
