"""Evaluation: route samples and predictions to the metric plugins and merge their reports."""

from __future__ import annotations

from .evaluate import evaluate

__all__ = ["evaluate"]
