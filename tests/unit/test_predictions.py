"""Whatever a pyfunc model returns -> named V2 output tensors (flat Arrow values, a shape),
and the client's choice among them."""

import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from arrowsmith.errors import InternalError, InvalidInputError
from arrowsmith.predictions import output_tensors, select_outputs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

NUMERIC_DTYPES = [
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
]


def described(predictions: object, names: list[str] | None = None) -> list[tuple]:
    """(name, shape, Python values) of each output, the values read back through pyarrow."""
    return [
        (name, shape, pa.array(values).to_pylist())
        for name, shape, values in output_tensors(predictions, names or [])
    ]


def test_ndarray_takes_the_first_output_name() -> None:
    predictions = np.array([1.5, 2.5, 3.5])
    assert described(predictions, ["quality", "unused"]) == [("quality", [3], [1.5, 2.5, 3.5])]


def test_ndarray_without_output_names() -> None:
    assert described(np.array([1, 2])) == [("output-0", [2], [1, 2])]


def test_2d_ndarray_keeps_its_shape_row_major() -> None:
    predictions = np.arange(6, dtype=np.int64).reshape(2, 3)
    ((name, shape, values),) = output_tensors(predictions, [])
    assert (name, shape) == ("output-0", [2, 3])
    assert pa.array(values).type == pa.int64()
    assert pa.array(values).to_pylist() == [0, 1, 2, 3, 4, 5]


def test_transposed_ndarray_is_flattened_in_logical_order() -> None:
    """A non-contiguous view must not leak its memory order into the values."""
    predictions = np.arange(6, dtype=np.float64).reshape(2, 3).T
    assert described(predictions) == [("output-0", [3, 2], [0.0, 3.0, 1.0, 4.0, 2.0, 5.0])]


def test_dataframe_gives_one_output_per_column() -> None:
    """MLServer's convention: [n, 1] per column, named by the column, whatever the names
    the signature gives."""
    frame = pd.DataFrame({"low": [1.0, 2.0], "high": [3.0, 4.0], "label": ["a", "b"]})
    assert described(frame, ["ignored"]) == [
        ("low", [2, 1], [1.0, 2.0]),
        ("high", [2, 1], [3.0, 4.0]),
        ("label", [2, 1], ["a", "b"]),
    ]


def test_dataframe_from_2d_block_and_integer_column_names() -> None:
    """Columns sliced out of one 2-D block are strided; names become text."""
    frame = pd.DataFrame(np.arange(6, dtype=np.float64).reshape(3, 2))
    assert described(frame) == [("0", [3, 1], [0.0, 2.0, 4.0]), ("1", [3, 1], [1.0, 3.0, 5.0])]


def test_named_series() -> None:
    series = pd.Series([1, 2, 3], name="score")
    assert described(series, ["other"]) == [("score", [3], [1, 2, 3])]


def test_unnamed_series_takes_the_output_name() -> None:
    assert described(pd.Series([0.5]), ["quality"]) == [("quality", [1], [0.5])]
    assert described(pd.Series([0.5])) == [("output-0", [1], [0.5])]


def test_dict_of_arrays() -> None:
    predictions = {"probabilities": np.array([[0.1, 0.9], [0.8, 0.2]]), "label": [1, 0]}
    assert described(predictions, ["ignored"]) == [
        ("probabilities", [2, 2], [0.1, 0.9, 0.8, 0.2]),
        ("label", [2], [1, 0]),
    ]


def test_list() -> None:
    assert described([[1, 2], [3, 4], [5, 6]]) == [("output-0", [3, 2], [1, 2, 3, 4, 5, 6])]


def test_scalar_has_shape_1() -> None:
    assert described(4.25, ["value"]) == [("value", [1], [4.25])]
    assert described(np.int64(7)) == [("output-0", [1], [7])]


@pytest.mark.parametrize(
    "predictions",
    [np.array(["ab", "ç"]), np.array(["ab", "ç"], dtype=object), ["ab", "ç"]],
    ids=["unicode", "object", "list"],
)
def test_strings(predictions: object) -> None:
    ((name, shape, values),) = output_tensors(predictions, [])
    assert (name, shape) == ("output-0", [2])
    assert pa.types.is_string(pa.array(values).type)
    assert pa.array(values).to_pylist() == ["ab", "ç"]


def test_string_column_of_a_dataframe() -> None:
    frame = pd.DataFrame({"upper": pd.Series(["A", "BC"], dtype=object)})
    assert described(frame) == [("upper", [2, 1], ["A", "BC"])]


def test_bytes() -> None:
    assert described(np.array([b"\x00\xff", b""], dtype=object)) == [
        ("output-0", [2], [b"\x00\xff", b""])
    ]


def test_datetimes_become_iso_text() -> None:
    """V2 has no time type."""
    moments = np.array(["2024-01-02T03:04:05", "2024-02-29T00:00:00"], dtype="datetime64[s]")
    assert described(moments) == [("output-0", [2], ["2024-01-02T03:04:05", "2024-02-29T00:00:00"])]


def test_datetime_column_becomes_iso_text() -> None:
    frame = pd.DataFrame({"at": [datetime.datetime(2024, 1, 2, 3, 4, 5)]})
    ((name, shape, values),) = described(frame)
    assert (name, shape) == ("at", [1, 1])
    assert datetime.datetime.fromisoformat(values[0]) == datetime.datetime(2024, 1, 2, 3, 4, 5)


def test_time_zone_aware_datetimes_become_iso_text() -> None:
    moments = pd.Series(pd.to_datetime(["2024-01-02T03:04:05+01:00"]), name="at")
    assert described(moments) == [("at", [1], ["2024-01-02T03:04:05+01:00"])]


def test_complex_values_are_an_internal_error() -> None:
    with pytest.raises(InternalError, match="output-0"):
        output_tensors(np.array([1 + 2j]), [])


def test_ragged_dict_value_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="dict"):
        output_tensors({"a": [[1, 2], [3]]}, [])


def test_unencodable_object_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="output-0"):
        output_tensors(object(), [])


def test_ragged_list_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="list"):
        output_tensors([[1, 2], [3]], [])


OUTPUTS = [("a", [1], pa.array([1])), ("b", [1], pa.array([2])), ("c", [1], pa.array([3]))]


def test_select_outputs_in_requested_order() -> None:
    assert [o[0] for o in select_outputs(OUTPUTS, ["c", "a"])] == ["c", "a"]


def test_select_outputs_all_when_none_requested() -> None:
    assert select_outputs(OUTPUTS, []) == OUTPUTS


def test_select_unknown_outputs_names_them() -> None:
    with pytest.raises(InvalidInputError) as raised:
        select_outputs(OUTPUTS, ["a", "nope", "gone"])
    message = str(raised.value)
    assert "'nope'" in message
    assert "'gone'" in message
    assert "['a', 'b', 'c']" in message


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(NUMERIC_DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_numeric_arrays_round_trip(array: np.ndarray) -> None:
    """Any numeric ndarray: its shape (a scalar as [1]), its dtype and its values survive."""
    ((name, shape, values),) = output_tensors(array, [])
    assert name == "output-0"
    assert shape == (list(array.shape) or [1])
    back = pa.array(values).to_numpy(zero_copy_only=False)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array.reshape(-1))
