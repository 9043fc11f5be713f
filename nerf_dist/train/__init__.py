"""Training, split by concern (the order a run goes through them):

- :mod:`.resume`     which checkpoint every rank resumes from (decided once, on rank 0)
- :mod:`.build`      the run's parts: scene bounds, the model under DDP, optimiser and scaler
- :mod:`.schedule`   per-step seeds, the learning-rate schedule, Adam
- :mod:`.step`       one step's loss terms and backward pass, as plain functions
- :mod:`.guards`     what all ranks agree on each step (stop, non-finite, time cap) and the
                     non-finite policy
- :mod:`.validation` in-training validation, rendered by all ranks together
- :mod:`.loop`       the Trainer (builds from the above; a short loop) and :func:`train`
"""
from .loop import Trainer, train
from .schedule import lr_at, make_adam, step_seed

__all__ = ["Trainer", "train", "lr_at", "make_adam", "step_seed"]
