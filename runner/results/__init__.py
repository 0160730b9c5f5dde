"""Results: Parquet tables (store), their views (tables in rich, markdown, CSV, JSON) and plots."""
from .plots import plot_all
from .render import FORMATS, render
from .report import show, views_of, write_report
from .robustness import masking_flags, worst_case
from .store import EPOCH_SCHEMA, EVAL_KEY, EVAL_SCHEMA, TRIAL_KEY, ResultStore, trials_schema
from .views import View, eps_label, pivot_view, pivot_views, trials_views

__all__ = [
           "EPOCH_SCHEMA",
           "EVAL_KEY",
           "EVAL_SCHEMA",
           "FORMATS",
           "TRIAL_KEY",
           "ResultStore",
           "View",
           "eps_label",
           "masking_flags",
           "pivot_view",
           "pivot_views",
           "plot_all",
           "render",
           "show",
           "trials_schema",
           "trials_views",
           "views_of",
           "worst_case",
           "write_report",
]
