"""The study registry. Importing a study module registers it; a new study is one module and one line here."""

from transferlab.studies import (  # noqa: F401  (registration)
    discriminative_lr,
    epochs,
    forgetting,
    layer_probe,
    learning_curve,
    lora_rank,
    lr_sweep,
    model_size,
)
from transferlab.studies.base import STUDIES, Budget, Point, Study, get_study, register_study, run_study, study_config

__all__ = ["STUDIES", "Budget", "Point", "Study", "get_study", "register_study", "run_study", "study_config"]
