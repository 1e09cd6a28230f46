"""The recipe registry: the one list of training recipes, by name.

``TrainConfig`` validation, the training loop and ``solar-index train --recipe`` all read it.
The package's recipes register themselves where they are defined (``solar.train.recipes`` and
``solar.train.ablations``); those modules load on the first look-up, so importing this module
costs nothing.  A recipe of your own is trained by name after one call::

    from solar.train import Recipe, TrainConfig, register_recipe, train

    @register_recipe("my-clip", default_model="score-fusion-offline")
    class MyClip(Recipe):
        def loss(self, model, feats, idx, step, source):
            ...
            return loss, {"my_metric": value}

    train(TrainConfig(recipe="my-clip", out_dir="runs/mine"))

An installed package can offer recipes without any call, through the ``solar.recipes`` entry-point
group, read on the first look-up (so ``solar-index train --recipe`` sees them too)::

    # the package's pyproject.toml
    [project.entry-points."solar.recipes"]
    my-clip = "my_package.recipes:MyClip"       # a Recipe subclass, registered as "my-clip"
    more = "my_package.more_recipes"            # a module whose import registers its recipes

A class registered this way takes ``default_model`` and ``default_lr`` from its class attributes
of those names when it has them.  An entry point that fails to load is skipped with a warning
naming it; the package's own recipes are never affected.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

# modules whose import registers the package's recipes
_BUILTIN_MODULES = ("solar.train.recipes", "solar.train.ablations")
ENTRY_POINT_GROUP = "solar.recipes"


@dataclass(frozen=True)
class RecipeSpec:
    """One registered recipe.

    name: what ``TrainConfig.recipe`` and ``--recipe`` take.
    cls: called as ``cls(cfg, total_steps)``; see ``solar.train.recipes.Recipe``.
    default_model: the model to start from when ``TrainConfig.model`` is None (None: the caller
        must give one, as stage 2 needs its stage-1 run folder).
    default_lr: the learning rate when ``TrainConfig.lr`` is None.
    """
    name: str
    cls: type
    default_model: Optional[str]
    default_lr: float

    @property
    def summary(self) -> str:
        """The first line of the class docstring."""
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict = {}
_builtins_loaded = False


def register_recipe(name: str, cls: Optional[type] = None, *, default_model: Optional[str] = None,
                    default_lr: float = 1e-3, replace: bool = False):
    """Register ``cls`` as the recipe called ``name``; returns ``cls``.

    Used as a decorator when ``cls`` is left out: ``@register_recipe("name", default_model=...)``.
    A name already taken by another class raises ValueError unless ``replace=True``.
    """
    if cls is None:
        return lambda c: register_recipe(name, c, default_model=default_model,
                                         default_lr=default_lr, replace=replace)
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        raise ValueError(f"a recipe name is a non-empty string without spaces, got {name!r}")
    from .recipes import Recipe     # defined before the package's recipes register
    if not (isinstance(cls, type) and issubclass(cls, Recipe)):
        raise TypeError(f"recipe {name!r}: expected a subclass of solar.train.Recipe, got {cls!r}")
    if default_lr <= 0:
        raise ValueError(f"recipe {name!r}: default_lr must be positive, got {default_lr}")
    old = _REGISTRY.get(name)
    if old is not None and not replace and _qualname(old.cls) != _qualname(cls):
        raise ValueError(f"recipe {name!r} is already registered ({_qualname(old.cls)}); pass "
                         "replace=True to replace it")
    _REGISTRY[name] = RecipeSpec(name, cls, default_model, float(default_lr))
    return cls


def unregister_recipe(name: str) -> None:
    """Remove a registered recipe (KeyError if there is none of that name)."""
    _load_builtins()
    del _REGISTRY[name]


def recipe_spec(name: str) -> RecipeSpec:
    """The registered recipe ``name``; ValueError naming the registered ones when unknown."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown recipe {name!r}; registered recipes: "
                         f"{', '.join(recipe_names())}") from None


def recipe_class(name: str) -> type:
    """The class of the registered recipe ``name``."""
    return recipe_spec(name).cls


def recipe_names() -> tuple:
    """Names of the registered recipes, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
    except BaseException:
        _builtins_loaded = False
        raise
    _load_entry_points()


def _load_entry_points() -> None:
    """Recipes of installed packages (the ``solar.recipes`` entry-point group)."""
    import inspect
    import warnings
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if inspect.isclass(obj):
                if ep.name not in _REGISTRY or _REGISTRY[ep.name].cls is not obj:
                    register_recipe(ep.name, obj, default_model=getattr(obj, "default_model", None),
                                    default_lr=getattr(obj, "default_lr", 1e-3))
            elif not inspect.ismodule(obj):
                raise TypeError(f"expected a Recipe subclass or a module, got {obj!r}")
        except Exception as err:  # noqa: BLE001 - one broken package must not stop training
            warnings.warn(f"recipe entry point {ep.name!r} ({ep.value}, group "
                          f"{ENTRY_POINT_GROUP!r}) was skipped: {type(err).__name__}: {err}",
                          stacklevel=3)
