"""The ``padt serve`` web application (FastAPI): the page, ``POST /api/predict`` and what the page needs.

Routes:
    ``GET /``                          the page (one HTML file, no outside resources)
    ``GET /api/info``                  model, tasks, limits, examples, batch sizes run so far
    ``GET /api/examples/{name}``       an example image (PNG)
    ``POST /api/predict``              image(s) + prompt -> the ``padt predict --out`` (``--multi``) JSON record
    ``GET /api/render/{id}``           a kept result drawn on its image (``?masks=false&cells=false`` hide
                                       them, ``?image=1`` the second image of several)

Every error is JSON ``{"error": message, "status": code}``: 4xx for a bad request (the message names the
field and the limit), 503 when the server already holds as many requests as it may (retry after
``Retry-After`` seconds), 504 past ``timeout_s``. A request is counted from its first byte, so requests
being read, decoded, queued or run never exceed ``max_queue + max_batch_size``.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request, ...) at definition
# time, and those names are imported inside create_app so that importing this module needs no FastAPI.
import asyncio
import base64
import binascii
import json
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from .batcher import Batcher, QueueFull
from .engine import Answer, Job, PaDTEngine
from .examples import Example
from .inputs import TASKS, RequestError, decode_images, task_prompt
from .limits import ServeLimits

__all__ = ["create_app"]

_JSON_FIELDS = ("image", "image_name", "images", "image_names", "task", "prompt", "labels")


def create_app(engine: PaDTEngine, limits: ServeLimits | None = None, examples: list[Example] | None = None) -> Any:
    """The FastAPI application serving ``engine`` (needs the ``serve`` extra: ``pip install "padt[serve]"``).

    Args:
        engine: the model behind the page and the API.
        limits: request, queue and batch bounds (defaults: :class:`ServeLimits`).
        examples: images the page offers on first open (``shapes_examples()``).

    Example:
        >>> app = create_app(PaDTEngine(model), ServeLimits(max_batch_size=4), shapes_examples())
        >>> uvicorn.run(app, host="127.0.0.1", port=7860)
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    limits = limits or ServeLimits()
    examples = {e.name: e for e in examples or []}
    batcher: Batcher[Job, Answer | Exception] = Batcher(
        engine.answer, limits.max_batch_size, limits.max_wait_ms / 1000, limits.max_queue
    )
    kept: OrderedDict[str, Answer] = OrderedDict()  # results the page may redraw; the oldest go first
    state = {"in_flight": 0}
    capacity = limits.max_queue + limits.max_batch_size
    body_limit = limits.max_upload_bytes * 4 // 3 + 64 * 1024  # base64 in JSON, plus the other fields
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        batcher.close()  # after the last request: the worker thread ends with the server

    # no /docs: its page would load scripts from a CDN
    app = FastAPI(title="padt serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, err: RequestError) -> JSONResponse:
        return error(err.status, err.message, {"Retry-After": "1"} if err.status == 503 else None)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        return error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))

    @app.get("/", response_class=HTMLResponse)
    async def _page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/info")
    async def _info() -> dict[str, Any]:
        recipe = engine.model.recipe
        return {
            "model": recipe.name,
            "tasks": list(TASKS),
            "limits": limits.to_json(),
            "examples": [
                {"name": e.name, "url": f"/api/examples/{e.name}", "sentence": e.sentence, "labels": list(e.labels)}
                for e in examples.values()
            ],
            "batch_sizes": {str(size): n for size, n in sorted(batcher.batch_sizes.items())},
            "waiting": batcher.waiting,
            "in_flight": state["in_flight"],
        }

    @app.get("/api/examples/{name}")
    async def _example(name: str) -> Response:
        if name not in examples:
            raise RequestError(404, f"no example image {name!r}; GET /api/info lists them")
        return Response(examples[name].png, media_type="image/png")

    @app.post("/api/predict")
    async def _predict(request: Request, keep: bool = False) -> Response:
        if state["in_flight"] >= capacity:
            raise RequestError(
                503, f"the server holds {capacity} requests already (padt serve --max-queue); retry in a moment"
            )
        state["in_flight"] += 1
        try:
            fields = await _read_fields(request, limits, body_limit)
            images = await run_in_threadpool(decode_images, fields["files"], limits)
            prompt = task_prompt(fields["task"], fields["prompt"], fields["labels"], engine.templates, limits)
            names = [name for _, name in fields["files"]]
            job = Job(images[0], names[0], prompt) if len(images) == 1 else Job(images, names, prompt)
            try:
                future = batcher.submit(job)
            except QueueFull as err:
                raise RequestError(503, f"{err}; retry in a moment") from None
            try:
                answer = await asyncio.wait_for(asyncio.wrap_future(future), timeout=limits.timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(504, f"no answer within {limits.timeout_s:g} s (padt serve --timeout)") from None
            except (ValueError, LookupError) as err:  # the model's own bad-input errors (a VRT past the image...)
                raise RequestError(422, str(err)) from None
        finally:
            state["in_flight"] -= 1
        headers = {}
        if keep and limits.result_cache:
            key = secrets.token_urlsafe(12)
            kept[key] = answer
            while len(kept) > limits.result_cache:
                kept.popitem(last=False)
            headers["X-Padt-Result"] = key
        return Response(json.dumps(answer.record), media_type="application/json", headers=headers)

    @app.get("/api/render/{key}")
    async def _render(key: str, masks: bool = True, cells: bool = True, image: int = 0) -> Response:
        answer = kept.get(key)
        if answer is None:
            raise RequestError(404, f"no kept result {key!r} (the server keeps the last {limits.result_cache})")
        if not 0 <= image < len(answer.job.images):
            raise RequestError(404, f"image {image}: the result has {len(answer.job.images)} image(s)")
        png = await run_in_threadpool(engine.draw, answer, masks, cells, image)
        return Response(png, media_type="image/png")

    return app


async def _read_fields(request: Any, limits: ServeLimits, body_limit: int) -> dict[str, Any]:
    """``files`` (``(bytes, name)`` per image), ``task``, ``prompt``, ``labels`` of a JSON or multipart request."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise RequestError(411, "send a Content-Length header (the server bounds request sizes)")
    if int(length) > body_limit:
        raise RequestError(
            413, f"request body has {int(length):,} bytes, more than the server's limit of {body_limit:,}"
        )
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart_fields(request, limits)
    if kind == "application/json":
        return _json_fields(await request.body(), limits)
    raise RequestError(
        415, f"content type {kind or 'none'!r}: send application/json (image as base64) or multipart/form-data"
    )


def _json_fields(body: bytes, limits: ServeLimits) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the body must be a JSON object with {', '.join(_JSON_FIELDS)}")
    unknown = sorted(set(data) - set(_JSON_FIELDS))
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_JSON_FIELDS)}")
    for name in ("image", "image_name", "task", "prompt"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise RequestError(422, f"field {name} must be a string, got {type(data[name]).__name__}")
    labels = data.get("labels")
    if labels is not None and not (
        isinstance(labels, str) or (isinstance(labels, list) and all(isinstance(x, str) for x in labels))
    ):
        raise RequestError(422, "field labels must be a list of strings or one comma-separated string")
    for name in ("images", "image_names"):
        value = data.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            raise RequestError(422, f"field {name} must be a list of strings")
    if data.get("image") and data.get("images"):
        raise RequestError(422, "send either image (one) or images (several in one conversation), not both")
    if data.get("images"):
        texts, names = data["images"], data.get("image_names") or []
        if len(texts) > limits.max_images:
            raise RequestError(413, f"{len(texts)} images, more than the server's limit of {limits.max_images}")
        if names and len(names) != len(texts):
            raise RequestError(422, f"{len(texts)} images but {len(names)} image_names")
        names = names or [f"upload{i}" for i in range(len(texts))]
    elif data.get("image"):
        texts, names = [data["image"]], [data.get("image_name") or "upload"]
    else:
        raise RequestError(422, "field image is missing: send the image file's bytes as base64")
    return {
        "files": [(_base64(text, name), name) for text, name in zip(texts, names)],
        "task": data.get("task"),
        "prompt": data.get("prompt"),
        "labels": labels,
    }


def _base64(text: str, name: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL, as a browser's FileReader gives it
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"image {name!r} is not valid base64") from None


async def _multipart_fields(request: Any, limits: ServeLimits) -> dict[str, Any]:
    try:
        # parts up to the whole body's size: the prompt's own limit below gives the clearer message
        form = await request.form(max_files=limits.max_images, max_fields=8, max_part_size=limits.max_upload_bytes)
    except Exception as err:  # python-multipart's parse errors, a field over max_part_size
        raise RequestError(400, f"cannot read the multipart form: {getattr(err, 'detail', err)}") from None
    uploads = form.getlist("image")
    if not uploads or any(isinstance(upload, str) for upload in uploads):
        raise RequestError(422, "field image is missing: send the image file as the form's 'image' part")
    files = [(await upload.read(limits.max_upload_bytes + 1), upload.filename or "upload") for upload in uploads]
    values = {name: form.get(name) or None for name in ("task", "prompt", "labels")}  # a form sends "" for unset
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise RequestError(422, f"field {name} must be text, not a file")
    return {"files": files, **values}
