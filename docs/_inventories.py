"""Intersphinx inventories written from the installed packages, so that cross-references to
scikit-learn, PyTorch, Lightning, nilearn and NumPy resolve on a machine without network (as
on many hospital and cluster networks) and the built pages link to those projects' sites.

Sphinx fetches ``objects.inv`` from each project's site; offline that fetch fails with a
warning (an error under ``-W``). Instead, each inventory lists the public names of the
installed package (scikit-learn's and nilearn's ``__all__``, PyTorch's ``torch.nn`` layers)
or a short list, with the URL pattern of that project's API pages.
"""

import importlib
import zlib
from pathlib import Path

SKLEARN = "https://scikit-learn.org/stable/"
TORCH = "https://docs.pytorch.org/docs/stable/"
LIGHTNING = "https://lightning.ai/docs/pytorch/stable/"
NILEARN = "https://nilearn.github.io/stable/"
NUMPY = "https://numpy.org/doc/stable/"


def _role(obj) -> str:
    return "py:class" if isinstance(obj, type) else "py:function"


def _public(package: str, submodules) -> list[tuple[str, str]]:
    """(full name, role) of every name in each submodule's ``__all__``."""
    entries = []
    for sub in submodules:
        try:
            module = importlib.import_module(f"{package}.{sub}")
        except ImportError:
            continue
        for name in getattr(module, "__all__", []):
            try:
                obj = getattr(module, name, None)
            except ImportError:  # an experimental name that needs its own import
                continue
            if obj is not None and not isinstance(obj, type(module)):
                entries.append((f"{package}.{sub}.{name}", _role(obj)))
    return entries


def sklearn_entries():
    import sklearn

    names = [m for m in sklearn.__all__ if not m[0].isupper() and "." not in m]
    entries = _public("sklearn", names)
    entries += [(f"sklearn.{n}", "py:function") for n in ("set_config", "get_config", "clone")]
    entries += [("sklearn.base.clone", "py:function")]
    entries += [(f"sklearn.base.{n}", "py:class") for n in ("BaseEstimator", "TransformerMixin")]
    return [(name, role, f"modules/generated/{name}.html#$") for name, role in entries]


def nilearn_entries():
    entries = _public("nilearn", ("maskers", "plotting", "image", "datasets", "masking"))
    return [(name, role, f"modules/generated/{name}.html#$") for name, role in entries]


def torch_entries():
    import torch.nn

    entries = [
        (f"torch.nn.{name}", "py:class", f"generated/torch.nn.{name}.html#$")
        for name in torch.nn.modules.__all__
    ]
    entries += [
        ("torch.Tensor", "py:class", "tensors.html#$"),
        ("torch.Generator", "py:class", "generated/torch.Generator.html#$"),
        ("torch.dtype", "py:class", "tensor_attributes.html#$"),
        ("torch.device", "py:class", "tensor_attributes.html#$"),
        ("torch.optim.Adam", "py:class", "generated/torch.optim.Adam.html#$"),
        ("torch.utils.data.Dataset", "py:class", "data.html#$"),
        ("torch.utils.data.DataLoader", "py:class", "data.html#$"),
    ]
    return entries


def lightning_entries():
    pages = {
        "Trainer": "trainer.trainer.Trainer",
        "LightningModule": "core.LightningModule",
        "Callback": "callbacks.Callback",
        "callbacks.Callback": "callbacks.Callback",
        "callbacks.EarlyStopping": "callbacks.EarlyStopping",
        "callbacks.ModelCheckpoint": "callbacks.ModelCheckpoint",
        "loggers.CSVLogger": "loggers.csv_logs.CSVLogger",
        "loggers.TensorBoardLogger": "loggers.tensorboard.TensorBoardLogger",
    }
    return [
        (
            f"{package}.{name}",
            "py:class",
            f"api/lightning.pytorch.{page}.html#lightning.pytorch.{page}",
        )
        for name, page in pages.items()
        for package in ("pytorch_lightning", "lightning.pytorch")
    ]


def numpy_entries():
    return [
        (f"numpy.{name}", "py:class", f"reference/generated/numpy.{name}.html#$")
        for name in ("ndarray", "memmap", "dtype", "random.Generator")
    ]


def write_inventory(path: Path, project: str, entries) -> None:
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: installed\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(set(entries)))
    path.write_bytes(header.encode() + zlib.compress(body.encode()))


def intersphinx_mapping(folder: Path) -> dict:
    """Write one inventory per project into ``folder``; return Sphinx's intersphinx_mapping."""
    folder.mkdir(parents=True, exist_ok=True)
    projects = {
        "sklearn": ("scikit-learn", SKLEARN, sklearn_entries),
        "torch": ("PyTorch", TORCH, torch_entries),
        "lightning": ("Lightning", LIGHTNING, lightning_entries),
        "nilearn": ("nilearn", NILEARN, nilearn_entries),
        "numpy": ("NumPy", NUMPY, numpy_entries),
    }
    mapping = {}
    for key, (project, url, entries) in projects.items():
        path = folder / f"{key}.inv"
        write_inventory(path, project, entries())
        mapping[key] = (url, str(path))
    return mapping
