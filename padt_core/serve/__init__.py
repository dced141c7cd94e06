"""``padt serve``: a web page and a JSON API for a trained model, concurrent requests batched.

The web framework (FastAPI, uvicorn) comes with the ``serve`` extra (``pip install "padt[serve]"``) and
is imported only by :func:`create_app` and :func:`start_server`; :class:`Client` needs only the standard
library. See ``docs/serving.md``.
"""

from __future__ import annotations

from .app import create_app
from .batcher import Batcher, QueueFull
from .client import Client, ServeError
from .engine import Answer, Job, PaDTEngine
from .examples import Example, shapes_examples
from .inputs import TASKS, RequestError
from .limits import ServeLimits
from .server import RunningServer, is_loopback, start_server

__all__ = [
    "TASKS",
    "Answer",
    "Batcher",
    "Client",
    "Example",
    "Job",
    "PaDTEngine",
    "QueueFull",
    "RequestError",
    "RunningServer",
    "ServeError",
    "ServeLimits",
    "create_app",
    "is_loopback",
    "shapes_examples",
    "start_server",
]
