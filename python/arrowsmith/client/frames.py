"""What `predict` takes and gives, as V2 tensors: a frame (a pandas DataFrame, a pyarrow
Table or RecordBatch, a dict of numpy arrays, or one numpy array) becomes named input
tensors, and a response's outputs become the columns of a pyarrow Table.

A column is one tensor of shape [rows]; a fixed-size list column one of shape [rows, k]
(nested lists add dimensions); a numpy array keeps its shape. Floating-point nulls become
NaN; any other null is refused, naming the column. Text (str) travels as BYTES with the
tensor parameter `content_type: str`, binary as plain BYTES.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: The frames of rows and named columns.
Tabular: TypeAlias = pd.DataFrame | pa.Table | pa.RecordBatch

#: The frames whose tensors are named.
Named: TypeAlias = Tabular | Mapping[str, np.ndarray]

#: What `predict` takes: a lone numpy array is the model's first input.
Frame: TypeAlias = Named | np.ndarray

#: An output as the native decoder hands it over: name, V2 datatype, shape, flat values.
Output: TypeAlias = tuple[str, str, list[int], Any]

#: A V2 parameter value.
Parameter: TypeAlias = bool | int | float | str

#: The tensor parameters of a text input.
TEXT: dict[str, Parameter] = {"content_type": "str"}

#: The Arrow types of text.
_TEXT_TYPES = frozenset({pa.string(), pa.large_string(), pa.string_view()})

#: DataFrames of fewer rows are read in one block (see `_block_columns`).
SMALL_ROWS = 8192


class Input(NamedTuple):
    """One input tensor, in the form the native encoder takes."""

    name: str
    shape: list[int]
    #: Flat values in row-major order, of the Arrow type of a V2 datatype.
    values: pa.Array
    parameters: dict[str, Parameter] | None


class Column(NamedTuple):
    """A table column ready to send: the dimensions each row holds, and its values flat."""

    name: str
    dims: list[int]
    values: pa.Array


def row_count(frame: Tabular) -> int:
    return len(frame) if isinstance(frame, pd.DataFrame) else int(frame.num_rows)


def _is_text(arrow_type: pa.DataType) -> bool:
    return arrow_type in _TEXT_TYPES


def _is_v2(arrow_type: pa.DataType) -> bool:
    """Whether a V2 datatype carries values of `arrow_type`."""
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or _is_text(arrow_type)
        or pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or pa.types.is_binary_view(arrow_type)
    )


def _nulls(name: str, count: int) -> ValueError:
    return ValueError(
        f"column '{name}' has {count} missing (null) values; only floating-point columns "
        "may have them (as NaN)"
    )


def _flat(name: str, values: pa.Array) -> Column:
    """A column's values flat, of a V2 datatype's Arrow type, with NaN for float nulls."""
    dims = []
    while pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise _nulls(name, values.null_count)
        dims.append(values.type.list_size)
        values = values.flatten()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not _is_v2(values.type):
        raise TypeError(
            f"column '{name}' holds {values.type} values; a column holds booleans, integers, "
            "floating-point numbers, text or binary values, one per row or a fixed-size list "
            "of them"
        )
    if values.null_count:
        if not pa.types.is_floating(values.type):
            raise _nulls(name, values.null_count)
        values = pc.fill_null(values, pa.scalar(math.nan, pa.float64()).cast(values.type))
    return Column(name, dims, values)


def _series_values(name: str, series: pd.Series) -> pa.Array:
    """A pandas column as Arrow: numpy numbers without a copy, text and bytes inferred."""
    dtype = series.dtype
    try:
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            return pa.array(series.to_numpy())
        return pa.Array.from_pandas(series)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise TypeError(f"column '{name}' ({dtype}) has no V2 datatype: {error}") from None


def _contiguous(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        return array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    return array


def _block_columns(frame: pd.DataFrame) -> list[Column] | None:
    """The columns of a small frame whose columns share one numpy numeric dtype, sliced from
    one Arrow array over the frame's values; None for any other frame. Below SMALL_ROWS
    rows, asking pandas for each column costs more than the copy of the values that
    `to_numpy` makes when pandas holds them in several blocks; a larger frame goes column
    by column, without a copy."""
    rows = len(frame)
    if rows >= SMALL_ROWS:
        return None
    dtypes = frame.dtypes.to_numpy()
    if not len(dtypes) or not isinstance(dtypes[0], np.dtype) or dtypes[0].kind not in "biuf":
        return None
    if any(dtype != dtypes[0] for dtype in dtypes):
        return None
    by_column = pa.array(np.ascontiguousarray(frame.to_numpy().T).reshape(-1))
    return [
        Column(str(name), [], by_column.slice(i * rows, rows))
        for i, name in enumerate(frame.columns.tolist())
    ]


def table_columns(frame: Tabular) -> list[Column]:
    """The columns of a tabular frame, checked and flat, named as strings."""
    if isinstance(frame, pd.DataFrame):
        block = _block_columns(frame)
        if block is not None:
            return block
        return [
            _flat(str(name), _series_values(str(name), series)) for name, series in frame.items()
        ]
    return [
        _flat(name, _contiguous(array))
        for name, array in zip(frame.column_names, frame.columns, strict=True)
    ]


def _tensor(name: str, array: np.ndarray) -> Input:
    """A numpy array as a tensor of its own shape."""
    if array.dtype.kind in "biuf" and not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    flat = np.ascontiguousarray(array).reshape(-1)
    try:
        values = pa.array(flat, from_pandas=flat.dtype == object)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise TypeError(f"tensor '{name}' ({array.dtype}) has no V2 datatype: {error}") from None
    column = _flat(name, values)
    return Input(name, list(array.shape), column.values, _parameters(column.values))


def _parameters(values: pa.Array) -> dict[str, Parameter] | None:
    return TEXT if _is_text(values.type) else None


def tensor_inputs(frame: Named) -> list[Input]:
    """The inputs a frame makes."""
    if isinstance(frame, Tabular):
        rows = row_count(frame)
        return [
            Input(column.name, [rows, *column.dims], column.values, _parameters(column.values))
            for column in table_columns(frame)
        ]
    if isinstance(frame, Mapping):
        return [_tensor(str(name), np.asarray(array)) for name, array in frame.items()]
    raise TypeError(
        f"predict takes a pandas DataFrame, a pyarrow Table or RecordBatch, a dict of numpy "
        f"arrays or a numpy array, not {type(frame).__name__}"
    )


def flight_table(frame: Tabular) -> pa.Table:
    """A tabular frame's checked columns as a table for Arrow Flight (lists kept as lists)."""
    names, arrays = [], []
    for column in table_columns(frame):
        values = column.values
        for width in reversed(column.dims):
            values = pa.FixedSizeListArray.from_arrays(values, width)
        names.append(column.name)
        arrays.append(values)
    return pa.Table.from_arrays(arrays, names=names)


def outputs_table(outputs: list[Output], text: Collection[str]) -> pa.Table:
    """A response's outputs as columns, in answer order: [rows] and [rows, 1] as plain
    columns, [rows, d1, ...] as a fixed-size list of d1 x ... values per row. BYTES outputs
    named in `text` become strings, the others stay binary."""
    names, arrays = [], []
    for name, datatype, shape, exported in outputs:
        values = pa.array(exported)
        if datatype == "BYTES" and name in text:
            values = values.cast(pa.string())
        inner = shape[1:]
        if len(inner) > 1 or (len(inner) == 1 and inner[0] != 1):
            values = pa.FixedSizeListArray.from_arrays(values, math.prod(inner))
        names.append(name)
        arrays.append(values)
    return pa.Table.from_arrays(arrays, names=names)
