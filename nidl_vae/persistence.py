"""Saving fitted estimators to a file that loads without running any code from it.

A saved model is one ``.npz`` archive (numpy's zip of arrays) holding:

- ``__nidl_vae__``: a JSON document (as a unicode array) with the format version, the library
  versions, the estimator's class, its parameters and its fitted attributes;
- ``weight/<name>``: the module's parameters and buffers, on the CPU;
- ``array/<n>``: the arrays among the parameters and fitted attributes.

:func:`load` reads it with ``allow_pickle=False``: no object is unpickled, so a file that is
not a saved model (a pickle renamed ``.npz``, say) is refused before anything in it runs, and
the estimator is rebuilt from a fixed list of classes. Networks given by the user are not
saved as code: their weights are, and :func:`load` takes the architectures back
(``load(path, encoder=MyEncoder())``), checking them against the saved weights.
"""

import json
import os
import zipfile
from numbers import Integral, Real

import numpy as np
import sklearn
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

FORMAT = "nidl_vae.model"
FORMAT_VERSION = 4
# the module's own buffers; everything else of its state is the model's (format 2 keeps the
# model's weights under "model."; format 1, before the model was a module of its own, did not)
# Format 3 adds the unit the default networks read and write X in (see
# nidl_vae.distributions.MODEL_SPREAD); older models read X as it is: a unit of 1.
# Format 4 adds the origin the default encoders centre X on; older encoders read X uncentred.
_UNIT_SINCE_3 = "data_unit"
_ORIGIN_SINCE_4 = "origin"
_MODULE_BUFFERS = ("history_train", "history_val", "epochs_done", "steps_done")
_HEADER = "__nidl_vae__"


class _Encoder:
    """JSON values for parameters and fitted attributes, arrays set aside in ``arrays``."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.networks: list[str] = []

    def encode(self, value, where: str):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, Integral):
            return int(value)
        if isinstance(value, Real):
            return float(value)
        if isinstance(value, tuple):
            return {"tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {
                "dict": [
                    [self.encode(k, where), self.encode(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ]
            }
        if isinstance(value, np.ndarray):
            return self._array(value, where)
        if isinstance(value, nn.Module):
            # the architecture is code: the user hands it back at load
            self.networks.append(where)
            return {"network": where}
        raise TypeError(where)

    def _array(self, value: np.ndarray, where: str) -> dict:
        kind = "plain"
        if value.dtype == object:
            if not all(isinstance(v, str) for v in value.ravel()):
                raise TypeError(where)
            value, kind = value.astype(str), "object"
        key = f"array/{len(self.arrays)}"
        self.arrays[key] = value
        return {"array": key, "kind": kind}


def _decode(value, arrays, networks: dict):
    if isinstance(value, list):
        return [_decode(v, arrays, networks) for v in value]
    if not isinstance(value, dict):
        return value
    if "tuple" in value:
        return tuple(_decode(v, arrays, networks) for v in value["tuple"])
    if "dict" in value:
        return {
            _decode(k, arrays, networks): _decode(v, arrays, networks) for k, v in value["dict"]
        }
    if "array" in value:
        array = arrays[value["array"]]
        return array.astype(object) if value["kind"] == "object" else array
    return networks[value["network"]]


def save(estimator, path: str | os.PathLike) -> None:
    """Write a fitted estimator to ``path`` (an ``.npz`` archive; see the module's notes)."""
    check_is_fitted(estimator)
    encoder = _Encoder()
    params, reset = {}, []
    for name, value in estimator.get_params(deep=False).items():
        try:
            params[name] = encoder.encode(value, name)
        except TypeError:
            # callbacks, loggers or a RandomState instance: not data; loaded as the default
            params[name], reset = None, [*reset, name]
    fitted = {}
    for name, value in vars(estimator).items():
        if name in params or name == "module_" or name in estimator._derived_at_load:
            continue
        try:
            fitted[name] = encoder.encode(value, name)
        except TypeError:
            raise ValueError(
                f"The fitted attribute {name} of type {type(value).__name__} cannot be saved "
                "without pickle."
            ) from None
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "estimator": type(estimator).__name__,
        "versions": {
            "nidl_vae": _version(),
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "params": params,
        "reset_params": reset,
        "networks": encoder.networks,
        "fitted": fitted,
    }
    weights = {
        f"weight/{k}": v.detach().cpu().numpy() for k, v in estimator.module_.state_dict().items()
    }
    with open(path, "wb") as file:
        np.savez(file, **{_HEADER: np.array(json.dumps(header))}, **encoder.arrays, **weights)


def load(path: str | os.PathLike, **networks: nn.Module):
    """Read an estimator saved by ``save``; runs no code from the file.

    Parameters
    ----------
    path : str or path-like
        A file written by the estimator's ``save``.
    **networks : nn.Module
        The user networks the model was fitted with, under their parameter's name
        (``encoder=``, ``decoder=``, ``prior_network=``), or for a CRMVAE
        ``encoders={'name': module}`` and ``decoders=``. Their weights come from the file.

    Returns
    -------
    estimator : VAE, CVAE or CRMVAE
        Fitted, its module in eval mode on the CPU.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from nidl_vae import VAE, load
    >>> X = load_digits().data / 16
    >>> vae = VAE(latent_dim=4, max_epochs=2, random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     vae.save(f"{folder}/vae.npz")
    ...     received = load(f"{folder}/vae.npz")
    >>> bool(np.array_equal(received.transform(X), vae.transform(X)))
    True
    """
    from . import CRMVAE, CVAE, VAE

    classes = {cls.__name__: cls for cls in (VAE, CVAE, CRMVAE)}
    header, arrays, weights = _read(path, classes)
    if header["format_version"] < 2:
        weights = {(k if k in _MODULE_BUFFERS else f"model.{k}"): v for k, v in weights.items()}
    resolved = _resolve_networks(header["networks"], networks)
    estimator = classes[header["estimator"]]()
    params = {k: _decode(v, arrays, resolved) for k, v in header["params"].items()}
    params = {k: v for k, v in params.items() if k not in header["reset_params"]}
    estimator.set_params(**params)
    for name, value in header["fitted"].items():
        setattr(estimator, name, _decode(value, arrays, resolved))
    if not hasattr(estimator, "hidden_layer_sizes_"):
        # saved before hidden_layer_sizes='auto': the explicit sizes it was fitted with
        estimator.hidden_layer_sizes_ = estimator._hidden_layer_sizes(n_train=0)
    estimator._restore_derived()
    # the module keeps one row of history per epoch of its budget
    module = estimator._module_for_load(len(weights.get("history_train", [None])))
    for key, value in module.state_dict().items():
        name = key.rpartition(".")[2]
        if name == _UNIT_SINCE_3 and header["format_version"] < 3:
            weights.setdefault(key, torch.ones_like(value))
        if name == _ORIGIN_SINCE_4 and header["format_version"] < 4:
            weights.setdefault(key, torch.zeros_like(value))
    _load_weights(module, weights)
    estimator.module_ = module.eval()
    return estimator


def _read(path, classes: dict) -> tuple[dict, dict, dict]:
    """The header, arrays and weights of a saved model; a clear ValueError for anything else."""
    refused = ValueError(
        f"{os.fspath(path)!r} is not a model saved by nidl_vae. Only files written by an "
        "estimator's save() load; pickles and object arrays are refused unread."
    )
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        raise refused from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise refused
    with archive:
        try:
            header = json.loads(str(archive[_HEADER][()]))
            arrays = {k: archive[k] for k in archive.files if k.startswith("array/")}
            weights = {
                k[len("weight/") :]: torch.from_numpy(archive[k].copy())
                for k in archive.files
                if k.startswith("weight/")
            }
        except (KeyError, ValueError, TypeError):
            raise refused from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise refused
    if header["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} was saved in format {header['format_version']} by "
            f"nidl_vae {header['versions']['nidl_vae']}; this nidl_vae ({_version()}) reads "
            f"format {FORMAT_VERSION} and older. Upgrade nidl_vae."
        )
    if header.get("estimator") not in classes:
        raise refused
    return header, arrays, weights


def _resolve_networks(saved: list[str], given: dict) -> dict:
    """The user's modules for the saved network parameters (``encoder`` or
    ``encoders['name']``), with a clear error for any missing or unexpected one."""
    resolved = {}
    for where in saved:
        name, _, key = where.partition("[")
        module = given.get(name)
        if key:  # "encoders['left']": one module of a dict parameter
            module = module.get(key[1:-2]) if isinstance(module, dict) else None
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"This model was fitted with a user network for {where}: pass the same "
                f"architecture to load, e.g. load(path, {name}=...). Its weights come from "
                "the file."
            )
        resolved[where] = module
    expected = {where.partition("[")[0] for where in saved}
    unexpected = set(given) - expected
    if unexpected:
        raise ValueError(
            f"load() got networks for {sorted(unexpected)}, but the model was saved with "
            f"default networks there (user networks: {sorted(expected) or 'none'})."
        )
    return resolved


def _load_weights(module: nn.Module, weights: dict) -> None:
    own = module.state_dict()
    wrong = [
        f"{k}: saved {tuple(v.shape)}, network {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and own[k].shape != v.shape
    ]
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if wrong or missing or extra:
        raise ValueError(
            "The networks given to load do not match the saved weights: "
            + "; ".join(
                wrong + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in extra]
            )
            + ". Pass the architectures the model was fitted with."
        )
    module.load_state_dict(weights)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nidl_vae")
    except PackageNotFoundError:
        return "unknown"
