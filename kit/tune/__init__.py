"""Optuna search over config keys, with fold-aware pruning and studies that survive killed workers.

One module per concept (optuna's own layout):

- ``space``: the search-space YAML -> optuna distributions, and the config of a trial;
- ``pruning``: fold-aware intermediate values and steps, ``PRUNERS``;
- ``sampling``: ``SAMPLERS``, seeded per trial number;
- ``storage``: the RDB storage with heartbeats, Ctrl-C held around storage calls;
- ``study``: the study's setup, the objective and the worker loop;
- ``results``: the best config, the table of trials, plots.

``from kit import tune`` gives all of them: ``tune.open_storage(...)``, ``tune.run_study(...)``.
"""

from kit.tune.pruning import (
    PRUNERS,
    FoldPruningCallback,
    PrunerOptions,
    fold_best,
    intermediate_value,
    make_pruner,
    pruning_step,
)
from kit.tune.results import best_config, save_plots, trials_table, write_best
from kit.tune.sampling import SAMPLERS, TrialSeededSampler, make_sampler
from kit.tune.space import (
    NOT_SEARCHABLE,
    SPACE_DIR,
    check_space,
    epoch_stride,
    list_spaces,
    load_space,
    parse_space,
    resolve_space,
    suggest,
    trial_config,
)
from kit.tune.storage import (
    default_storage_url,
    deferred_interrupt,
    experimental_warnings_once,
    open_storage,
    redact_url,
)
from kit.tune.study import (
    FAIL_REASON,
    TRIAL_FAILURES,
    TuneSetup,
    counted,
    objective,
    open_study,
    run_study,
    study_base_config,
    worker_id,
)

__all__ = [
    "FAIL_REASON", "NOT_SEARCHABLE", "PRUNERS", "SAMPLERS", "SPACE_DIR", "TRIAL_FAILURES", "FoldPruningCallback",
    "PrunerOptions", "TrialSeededSampler", "TuneSetup", "best_config", "check_space", "counted", "deferred_interrupt",
    "default_storage_url", "epoch_stride", "experimental_warnings_once", "fold_best", "intermediate_value",
    "list_spaces", "load_space", "make_pruner", "make_sampler", "objective", "open_storage", "open_study",
    "parse_space", "pruning_step", "redact_url", "resolve_space", "run_study", "save_plots", "study_base_config",
    "suggest", "trial_config", "trials_table", "worker_id", "write_best",
]
