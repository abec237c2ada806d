"""Lightning's two namespaces: ``pytorch_lightning`` (the standalone package, the design
card's) and ``lightning.pytorch`` (the unified ``lightning`` package, what Lightning's own
documentation imports).

Both hold the same classes, twice: a Trainer of one refuses a module, callback or logger of
the other. The estimators therefore build everything of a run (the Trainer, the view of the
module it trains, their own callbacks) in the namespace of the objects the user put in
``trainer_params``: ``pytorch_lightning`` when there are none, ``lightning.pytorch`` when they
come from it; a mix of the two is refused.
"""

import importlib
from collections.abc import Iterator
from functools import cache
from types import ModuleType

PYTORCH_LIGHTNING = "pytorch_lightning"
LIGHTNING = "lightning.pytorch"

# the top-level package of an object's class, and the namespace it belongs to
_ROOTS = {
    "pytorch_lightning": PYTORCH_LIGHTNING,
    "lightning_fabric": PYTORCH_LIGHTNING,
    "lightning": LIGHTNING,
}


def namespace_of(obj) -> str | None:
    """The Lightning namespace of ``obj``'s class, or None if it is not Lightning's."""
    for cls in type(obj).__mro__:
        found = _ROOTS.get(cls.__module__.split(".")[0])
        if found is not None:
            return found
    return None


def _lightning_objects(trainer_params: dict | None) -> Iterator[tuple[str, object]]:
    for key, value in (trainer_params or {}).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            yield key, item


def namespace_for(trainer_params: dict | None) -> str:
    """The namespace of the Lightning objects in ``trainer_params`` (callbacks, loggers,
    profiler, plugins, strategy), ``pytorch_lightning`` when there are none; a ValueError
    for a mix of the two."""
    found: dict[str, str] = {}
    for key, item in _lightning_objects(trainer_params):
        namespace = namespace_of(item)
        if namespace is not None:
            found.setdefault(namespace, f"{key}: {type(item).__module__}.{type(item).__name__}")
    if len(found) > 1:
        raise ValueError(
            "trainer_params mixes objects of Lightning's two namespaces ("
            + "; ".join(found.values())
            + "): a Trainer of one refuses the other's. Import them all from pytorch_lightning "
            "or all from lightning.pytorch."
        )
    return next(iter(found), PYTORCH_LIGHTNING)


@cache
def lightning(namespace: str) -> ModuleType:
    """The namespace's package (``pytorch_lightning`` or ``lightning.pytorch``)."""
    package = importlib.import_module(namespace)
    if namespace != PYTORCH_LIGHTNING:
        import pytorch_lightning

        if package.__version__ != pytorch_lightning.__version__:
            raise ValueError(
                f"lightning {package.__version__} and pytorch-lightning "
                f"{pytorch_lightning.__version__} are installed: objects of lightning.pytorch "
                "work with nidl_vae when both are the same version. Install matching "
                f"versions (pip install lightning=={pytorch_lightning.__version__})."
            )
    return package


def is_callback(obj) -> bool:
    """Whether ``obj`` is a Callback of either namespace."""
    namespace = namespace_of(obj)
    return namespace is not None and isinstance(obj, lightning(namespace).Callback)


@cache
def in_namespace(cls: type, namespace: str) -> type:
    """``cls`` (a Lightning class of ``pytorch_lightning`` whose own code is a mixin before
    its Lightning base, e.g. ``class M(Steps, pl.LightningModule)``) rebuilt on the same base
    of ``namespace``."""
    if namespace == PYTORCH_LIGHTNING:
        return cls
    mixin, base = cls.__bases__
    lightning(namespace)  # checks the versions
    where = importlib.import_module(namespace + base.__module__.removeprefix(PYTORCH_LIGHTNING))
    other = getattr(where, base.__name__)
    return type(cls.__name__, (mixin, other), {"__module__": cls.__module__})


def view_in(obj, namespace: str):
    """``obj`` as an instance of its class rebuilt in ``namespace``, sharing its state (the
    same ``__dict__``: parameters, buffers, everything a run changes are ``obj``'s own)."""
    cls = in_namespace(type(obj), namespace)
    if cls is type(obj):
        return obj
    view = cls.__new__(cls)
    object.__setattr__(view, "__dict__", obj.__dict__)
    return view
