"""Evaluation: plan the grid's cells, compute them (engine; reference pipeline as its oracle), build rows."""
from .engine import Engine, Models, run_cells
from .plan import CLEAN, Cell, ImageSet, count_cells, image_key, plan_cells
from .reference import reference_rows
from .rows import make_row
from .settings import AttackSetting, DefenseSetting
from .stats import wilson_interval
from .task import EvalTask, evaluate_checkpoint, make_adversarials, test_images

__all__ = ["CLEAN", "AttackSetting", "Cell", "DefenseSetting", "Engine", "EvalTask", "ImageSet", "Models", "count_cells",
           "evaluate_checkpoint", "image_key", "make_adversarials", "make_row", "plan_cells", "reference_rows",
           "run_cells", "test_images", "wilson_interval"]
