"""Training: each stage's trainer on one loop (`loop`) with its recipe (`recipes`: what a stage
learns and how it is validated), the crops it draws (`data`), runs and their export to a weights
folder (`trainer`), and stage 1 adapted to a microscope's own noisy frames (`adapt`)."""

from napari_etdms.training.adapt import DEFAULT_MINUTES as DEFAULT_ADAPT_MINUTES
from napari_etdms.training.adapt import SETTINGS as ADAPT_SETTINGS
from napari_etdms.training.adapt import (
    VALIDATION_ROWS,
    AdaptFrame,
    adapt,
    frames_from_files,
    seconds_left,
    work_folder,
)
from napari_etdms.training.loop import is_lead, lead_decides, start_distributed, stop_distributed
from napari_etdms.training.trainer import StageTrainer, TrainConfig, export, load_train_config

__all__ = ["ADAPT_SETTINGS", "AdaptFrame", "DEFAULT_ADAPT_MINUTES", "StageTrainer", "TrainConfig", "VALIDATION_ROWS",
           "adapt", "export", "frames_from_files", "is_lead", "lead_decides", "load_train_config", "seconds_left",
           "start_distributed", "stop_distributed", "work_folder"]
