"""experiments: config-driven runs of kseq, `kseq run configs/NAME.yaml`.

`load_config` reads a YAML file into frozen dataclasses, `run_experiment` runs its task into a
fresh run folder. The command line (`experiments.cli`) only parses and calls these, so a
notebook can do the same.

Modules, one job each:

- `config`: YAML configs read into frozen dataclasses, overrides, `DevicesConfig`;
- `runner`: `run_experiment` / `resume_experiment`, the run folder and its record;
- `context`: `RunContext`, what a task gets (folder, keys, units, devices, metrics, figures);
- `mesh`: the device mesh and `split_leading_axis`;
- `distributed`: several processes (start, writer, barrier, broadcast, `host_array`, `put`);
- `files`: JSON values (`to_jsonable`, `read_json`) and atomic writes;
- `interrupts`: Ctrl-C and SIGTERM during a run;
- `errors`: `RunError`, `RunInterrupted`;
- `checkpoints`: orbax checkpoints of training loops (`TrainCheckpoints`);
- `show`: `show_run`, a finished run's results as text;
- `sweep`: a config run over the product of values of some keys (`run_sweep`, `resume_sweep`);
- `packaged`: the configs shipped with the package, found by name;
- `plots`, `timing`: figures and wall-clock timing shared by the tasks;
- `cli`: the `kseq` command; `tasks`: the experiment tasks.
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
