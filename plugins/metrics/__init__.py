"""Evaluation metric plugins, one per task: ``rec`` (Acc@0.5), ``res`` (cIoU, gIoU), ``ovd`` (COCO mAP),
``ric`` (CIDEr-D, greedy grounding precision/recall). ``reference`` / ``ovd_reference`` hold the
reference-protocol variants of REC, RES and OVD (``Metric.reference_variant()``, ``protocol=`` of
``padt_core.eval.evaluate``); they are not registered as tasks of their own.

Each class has a ``name`` (= the task it scores), a pydantic ``Config`` and the streaming API
``reset()`` / ``update(sample, prediction)`` / ``compute() -> dict``. Definitions: ``docs/metrics.md``.
Registered through the ``padt`` entry-point group like any third-party metric::

    [project.entry-points.padt]
    metrics = "padt_plugins.metrics"
"""

from __future__ import annotations

from padt_core.plugins import hookimpl

from .base import Metric
from .ovd import OVDMetric, OVDMetricConfig
from .ovd_reference import OVDReferenceMetric
from .rec import RECMetric, RECMetricConfig
from .rec_label import RECLabelMetric, RECLabelMetricConfig
from .reference import RECReferenceMetric, RESReferenceMetric
from .res import RESMetric, RESMetricConfig
from .ric import RICMetric, RICMetricConfig

__all__ = [
    "Metric",
    "OVDMetric",
    "OVDMetricConfig",
    "OVDReferenceMetric",
    "RECLabelMetric",
    "RECLabelMetricConfig",
    "RECMetric",
    "RECMetricConfig",
    "RECReferenceMetric",
    "RESMetric",
    "RESMetricConfig",
    "RESReferenceMetric",
    "RICMetric",
    "RICMetricConfig",
]


@hookimpl
def padt_metrics() -> list[type]:
    return [RECMetric, RESMetric, OVDMetric, RICMetric, RECLabelMetric]
