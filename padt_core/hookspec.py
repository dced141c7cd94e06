"""The hooks a padt plugin may implement: when each runs, what it receives, what its result means.

This module is the plugin author's reference, in the manner of pytest's ``_pytest/hookspec.py``.
A plugin is a module (or any object) with functions of these names marked ``@hookimpl``::

    from padt_core.plugins import hookimpl

    @hookimpl
    def padt_heads():
        return [KeypointHead]

registered either by an entry point in the ``padt`` group of the package's metadata::

    [project.entry-points.padt]
    my_heads = "my_package.heads"

or from Python with :func:`padt_core.plugins.register_plugin`. A plugin implements only the hooks
it needs.

**When hooks run.** Every hook here is a *registration* hook: it takes no arguments and returns a
list of plugin classes. padt calls each implementation once, the first time anything looks a
plugin up (validating a recipe, ``padt plugins``, :func:`padt_core.build`), and again after
:func:`~padt_core.plugins.register_plugin` or :func:`~padt_core.plugins.unregister_plugin`; the
classes go into one registry per hook, keyed by each class's ``name``. Nothing is instantiated at
that point: the core builds instances later from the recipe.

**What every returned class carries.** ``name: ClassVar[str]`` (unique within its kind; a second
class claiming a taken name is a :class:`~padt_core.plugins.DuplicatePluginError`) and
``Config: ClassVar[type[PluginConfig]]``, the pydantic model of its recipe section
``{name: ..., <options>}``, which rejects unknown options. The *kind* of a hook is its name
without ``padt_``: ``padt_heads`` fills the ``heads`` registry, looked up with
``get_plugin("heads", name)``.

**Checks.** After the entry points are loaded, and after each ``register_plugin``, padt checks that
every ``@hookimpl`` function names a hook defined here (pluggy's ``check_pending``), so a misspelt
``padt_head`` fails with an error naming the plugin, its package and the hook meant, instead of
being ignored. Returning ``None`` is the same as returning ``[]``.

**Not hooks.** Command-line verbs come from the ``padt.commands`` entry-point group instead (read
without importing the plugins, so that ``padt --help`` stays fast): see
:mod:`padt_core.cli._extensions`.
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "padt"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

# The functions below are specifications only: their bodies never run. Their order is the order of
# ``padt_core.plugins.KINDS`` (and of ``padt plugins``).


@hookspec
def padt_backbones() -> list[type]:
    """Register backbones: a multimodal LLM with its processor (recipe section ``backbone``).

    Classes subclass :class:`padt_core.backbone.Backbone`. The core builds one with
    ``cls.from_config(section)`` when a model is built (``from_saved`` when one is loaded) and asks
    it for prompts, processor batches, image features in raster order (``VisualFeatures``) and the
    size of a VRT cell in pixels.

    :return: backbone classes; built-ins ``qwen2_5_vl`` and ``llava``.
    """


@hookspec
def padt_trunks() -> list[type]:
    """Register decoder trunks (recipe section ``decoder.trunk``).

    Classes subclass :class:`padt_core.decoder.Trunk`. A trunk runs once per decoded batch of
    objects: per object, its VRT hidden states and the image features become the query tokens the
    heads read.

    :return: trunk classes; built-in ``padt``.
    """


@hookspec
def padt_heads() -> list[type]:
    """Register decoder heads (recipe section ``decoder.heads``, a list).

    Classes subclass :class:`padt_core.decoder.Head`: each owns some query tokens of the trunk's
    output, predicts from them, computes its own losses in training and post-processes its
    prediction into per-object outputs at inference (see that class for the attributes a head
    declares: the targets it learns from, the outputs it produces).

    :return: head classes; built-ins ``box``, ``score`` and ``mask``.
    """


@hookspec
def padt_datasets() -> list[type]:
    """Register dataset readers (recipe sections ``data.train`` / ``data.val``, and ``padt eval --data``).

    Classes subclass :class:`padt_core.data.DatasetReader`. One instance is built per recipe
    section when training or evaluation starts; it turns an on-disk format into
    :class:`padt_core.data.Sample` lists.

    :return: reader classes; built-ins ``coco``, ``refcoco``, ``ric``, ``padt_json``, ``shapes``.
    """


@hookspec
def padt_metrics() -> list[type]:
    """Register evaluation metrics, one per task name (``padt eval --task``, ``padt_core.eval``).

    Classes follow ``padt_plugins.metrics.base.Metric``: built with the task's options dict (checked
    by ``Config``), then ``reset`` / ``update(sample, prediction)`` / ``compute()``. The evaluation
    driver builds one per task it scores, ``get_plugin("metrics", task)``, so a metric's ``name`` is
    the task it scores.

    :return: metric classes; built-ins ``rec``, ``res``, ``ovd``, ``ric``.
    """


@hookspec
def padt_logits_processors() -> list[type]:
    """Register generation logits processors (recipe section ``generation.logits_processors``).

    Classes are Hugging Face ``LogitsProcessor`` subclasses with a
    ``from_config(section, model)`` class method, called each time the model generates.

    :return: logits-processor classes; built-in ``no_repeat_vrt``.
    """


@hookspec
def padt_answer_formats() -> list[type]:
    """Register answer formats: how objects are written in a completion and read back.

    Classes subclass :class:`padt_core.answer_format.AnswerFormat` (``name``, ``Config``, and the
    methods the core calls: ``check_recipe`` when a recipe is validated, ``build_projection`` when
    the model is built, ``encode_answer`` in the collator, ``read_completions`` after generation);
    a recipe selects one with ``answer_format: {name: ...}`` (default ``vrt``). A format that writes
    objects as text needs only ``render`` and ``parse`` (``docs/answer-formats.md``).

    :return: answer-format classes; built-ins ``vrt`` (PaDT) and ``text_box`` (Qwen2.5-VL-style
        text boxes).
    """
