"""Evaluation: route samples and predictions to the metric plugins and merge their reports."""

from __future__ import annotations

from .evaluate import PROTOCOLS, evaluate, evaluate_splits
from .table import format_report

__all__ = ["PROTOCOLS", "evaluate", "evaluate_splits", "format_report"]
