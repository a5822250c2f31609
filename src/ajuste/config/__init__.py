"""Run configuration: dataclasses with help metadata, YAML files and dotted overrides.

``sections`` holds the data/model/optim/train/peft sections, ``strategy_section`` the strategy's (built from
the registered strategies' options), ``run_config`` the whole and its parsing.

A field left at ``None`` means "auto": the strategy and the backbone's modality fill it in
(see ``ajuste.strategies.base.resolve_config``); ``ajuste train --print-config`` shows the result.
"""

from ajuste.config.run_config import (
    RunConfig,
    _suggest,
    describe_fields,
    load_config,
    save_config,
)
from ajuste.config.sections import (
    AUGMENT_LEVELS,
    TRACKERS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PeftConfig,
    TrainConfig,
)
from ajuste.config.strategy_section import (
    StrategyConfig,
    option_owner,
    register_strategy_options,
    strategy_options,
    strategy_section,
    unregister_strategy_options,
)

__all__ = ["AUGMENT_LEVELS", "DataConfig", "ModelConfig", "OptimConfig", "PeftConfig", "RunConfig", "StrategyConfig",
           "TRACKERS", "TrainConfig", "_suggest", "describe_fields", "load_config", "option_owner", "register_strategy_options",
           "save_config", "strategy_options", "strategy_section", "unregister_strategy_options"]
