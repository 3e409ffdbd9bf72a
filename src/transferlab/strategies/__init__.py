"""The strategy registry. Importing a strategy module registers it; add new ones to this list."""

from transferlab.strategies import adapters, bitfit, contrastive, full, head, ia3, lora, lpft, partial, prompt  # noqa: F401  (registration)
from transferlab.strategies.base import (
    STRATEGIES,
    Strategy,
    StrategyConfig,
    count_parameters,
    get_strategy,
    parse_strategy_list,
    register_strategy,
)

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "count_parameters", "get_strategy", "parse_strategy_list", "register_strategy"]
