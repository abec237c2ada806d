"""A CVAE's conditions given as a table: numeric covariates beside categorical columns.

A normative model conditions a brain on age (a number), sex and acquisition site
(categories): a pandas DataFrame, or a NumPy structured array, with one column each. Numeric
columns (integer or float) are standardised with their training mean and standard deviation;
categorical ones (strings, pandas categories, booleans) become one indicator per category seen
in fit. The encoded row is the columns in the table's order:

.. math:: c = [(a - \\bar a) / s_a,\\ 1[\\mathrm{sex} = F],\\ 1[\\mathrm{sex} = M],\\
    1[\\mathrm{site} = A], \\ldots]
"""

import numpy as np

_NUMERIC_KINDS = "iuf"


def table_columns(conditions) -> dict[str, np.ndarray] | None:
    """The columns of a DataFrame or structured array by name (as strings); None for other
    conditions (arrays of labels or covariates)."""
    if hasattr(conditions, "columns") and hasattr(conditions, "dtypes"):
        return {str(name): _values(conditions[name]) for name in conditions.columns}
    names = getattr(getattr(conditions, "dtype", None), "names", None)
    if names:
        return {str(name): np.asarray(conditions[name]) for name in names}
    return None


def _values(series) -> np.ndarray:
    # pandas' nullable numbers (Int64, Float64) would come out as objects, read as categories
    if getattr(series.dtype, "kind", "O") in _NUMERIC_KINDS:
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(series)


def _is_numeric(column: np.ndarray) -> bool:
    return column.dtype.kind in _NUMERIC_KINDS


def _check_column(name: str, column: np.ndarray) -> None:
    if column.ndim != 1:
        raise ValueError(f"conditions column {name!r} must hold one value per sample.")
    if _is_numeric(column):
        if not np.isfinite(column).all():
            raise ValueError(
                f"conditions column {name!r} has NaN or infinite values: every sample needs "
                "its covariates (impute them, or drop those samples)."
            )
        return
    values = column.ravel().tolist()
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise ValueError(
            f"conditions column {name!r} has missing values: every sample needs a category."
        )
    if len({type(v) for v in values}) > 1:
        raise ValueError(
            f"conditions column {name!r} mixes types ({sorted({type(v).__name__ for v in values})})"
            ": give one type per column (e.g. all strings)."
        )


def fit_table(columns: dict[str, np.ndarray]) -> dict:
    """The encoding of a table of conditions: its column names, the categories of each
    categorical column, and the mean and scale of the numeric ones (in the table's order)."""
    for name, column in columns.items():
        _check_column(name, column)
    numeric = [c.astype(np.float64) for c in columns.values() if _is_numeric(c)]
    mean = np.array([c.mean() for c in numeric])
    scale = np.array([c.std() for c in numeric])
    return {
        "names": np.array(list(columns), dtype=object),
        "categories": {
            name: np.unique(column) for name, column in columns.items() if not _is_numeric(column)
        },
        "mean": mean,
        "scale": np.where(scale > 0, scale, 1.0),
    }


def encode_table(
    columns: dict[str, np.ndarray],
    names: np.ndarray,
    categories: dict[str, np.ndarray],
    mean: np.ndarray,
    scale: np.ndarray,
    codes: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The encoded rows of a table of conditions (float32), columns matched by name; a
    ValueError names a missing column, a column of another kind, or an unseen category.

    ``codes`` holds, for a column with categories added after fit (``CVAE.adapt``), their
    learned codes: one row per added category (the last of ``categories[name]``) over the
    indicators of the categories seen in fit."""
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(
            f"conditions lack the column(s) {missing} this CVAE was fitted with ({list(names)})."
        )
    encoded, numeric = [], 0
    for name in names:
        column = columns[name]
        _check_column(name, column)
        if name not in categories:
            if not _is_numeric(column):
                raise ValueError(
                    f"conditions column {name!r} was numeric in fit; got values of dtype "
                    f"{column.dtype}."
                )
            value = (column.astype(np.float64) - mean[numeric]) / scale[numeric]
            encoded.append(value[:, None])
            numeric += 1
            continue
        known = categories[name]
        unseen = np.unique(column[~np.isin(column, known)])
        if len(unseen):
            raise ValueError(
                f"conditions column {name!r} has categories not seen in fit: "
                f"{unseen[:5].tolist()}; known categories are {known.tolist()}. To add a site "
                "(or another category), fit again with some of its subjects."
            )
        indicators = (column[:, None] == known[None, :]).astype(np.float64)
        added = None if codes is None else codes.get(name)
        if added is not None:
            n_fitted = len(known) - len(added)
            indicators = indicators[:, :n_fitted] + indicators[:, n_fitted:] @ added
        encoded.append(indicators)
    n_rows = len(next(iter(columns.values())))
    return np.concatenate(encoded, 1).astype(np.float32) if encoded else np.zeros((n_rows, 0))
