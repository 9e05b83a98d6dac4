"""Differential tests: Arrowsmith's native signature enforcement against MLflow's own.

For sklearn models the server skips MLflow's `_enforce_schema` and calls the flavor's predict
function with what its own enforcement produced, so that must equal MLflow's result exactly.
Hypothesis generates signatures and V2 requests (derandomized: the same cases on every run);
each request goes through both sides. Two exhaustive tests pair every column type and every
tensor dtype with every V2 datatype and list all their disagreements at once. The number of
cases each test ran, by outcome, is reported at the end of the session (conftest.py).

The oracle. The MLflow side of a V2 request is what MLServer's codecs would hand MLflow, the
codec chosen by the signature's content type. Each V2 input becomes one value:

- numeric and BOOL datatypes: a numpy array of the matching dtype (INT8 -> int8, ...,
  FP16 -> float16, FP32 -> float32, FP64 -> float64, BOOL -> bool);
- BYTES: UTF-8 text for a `string` or `datetime` column (an object column of str) or a `str`
  tensor spec (a numpy `<U` array); a numpy `S` array for a `bytes` tensor spec; otherwise
  (binary, boolean, numeric and Array/Object/Map/Any columns, object specs, inputs matching
  no spec) an object array of `bytes`.

A column signature gets a DataFrame with one column per V2 input, in request order, each
input of shape [n] or [n, 1] flattened to its n values. A named tensor signature gets a dict
name -> array (reshaped to the V2 shape); an unnamed one gets the first input's array.
MLflow's result is `mlflow.models.utils._enforce_schema(oracle_input, schema)` (the enforced
value, or an exception: `PyFuncModel.predict` turns any of them into an MlflowException).
Arrowsmith's result is `payload.model_input(_native.decode_request(body), model)[0]`, or an
`ArrowsmithError`. They agree when both refuse, or both accept with equal results: frames by
`assert_frame_equal(check_dtype=True, check_exact=True)`, arrays by dtype, shape and values,
dicts key by key. Arrowsmith refuses with InvalidInputError (INVALID_ARGUMENT), as MLflow's
refusals are INVALID_PARAMETER_VALUE. Params: `_enforce_params_schema` of all the request's
parameters as Python values (bool, int, str, float) against what Arrowsmith passes the
model, `enforce_params(model_params(...), pyfunc)`: equal values of equal types.

Known refusals, not disagreements: Arrowsmith refuses columns of MLflow's Array, Object, Map
and AnyType (UnsupportedError naming the column) whenever an input feeds one, whatever
MLflow does with it (the tally says how often MLflow accepted). V2 requests MLflow's codecs
cannot express are refused by design and tested on their own, naming the input: a column
input of shape [n, k > 1] (or of rank 3), columns with different row counts, BYTES that are
not UTF-8 where text is expected.
"""

from __future__ import annotations

import itertools
import math
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from arrowsmith import _native
from arrowsmith.errors import ArrowsmithError, InvalidInputError, UnsupportedError
from arrowsmith.models.fast_path import enforce_params
from arrowsmith.payload import model_params
from hypothesis import given
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.models.utils import _enforce_params_schema, _enforce_schema
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType, Array, Map, Object, Property
from v2_oracle import (
    DATATYPES,
    NUMPY_DTYPES,
    Outcome,
    V2Input,
    V2Param,
    arrowsmith_input,
    arrowsmith_side,
    assert_same_value,
    derandomized,
    loaded_model,
    mlflow_side,
    oracle_frame,
    oracle_tensors,
    request_bytes,
)

# ---- values -------------------------------------------------------------------------------

_INT_RANGES = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}
_FLOAT_WIDTHS = {"FP16": 16, "FP32": 32, "FP64": 64}
_DATETIME_TEXT = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes().map(str),
    st.sampled_from(["", "not a date", "2020-13-45", "2021-02-29", "12:30", "1700000000"]),
    st.text(max_size=6),
)
_JSON_TEXT = st.sampled_from(["[1.5, 2]", '{"p": 1}', '{"k": "v"}', "[]", "null", "x"])
_TEXT = st.text(max_size=8)
_NUMERIC_TEXT = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats().map(str),
    st.sampled_from(["", " 7 ", "1e3", "-0", "0x1F", "1_000", "nan", "+inf", "1,5"]),
)
#: What BYTES elements hold, by what the oracle decodes them as; "any" may be non-UTF-8.
_BYTES_ELEMENTS = {
    "datetime": _DATETIME_TEXT.map(str.encode),
    "text": _TEXT.map(str.encode),
    "json": _JSON_TEXT.map(str.encode),
    "any": st.one_of(_TEXT.map(str.encode), st.binary(max_size=6)),
}


def elements(datatype: str, text: str) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        return st.integers(low, high)
    if datatype in _FLOAT_WIDTHS:
        return st.floats(width=_FLOAT_WIDTHS[datatype])  # NaN and infinities included
    return _BYTES_ELEMENTS[text]


def values(datatype: str, count: int, text: str = "any") -> st.SearchStrategy[tuple[Any, ...]]:
    """`count` elements. INT64 is often 0/1 only, which MLflow lets into float columns;
    BYTES that may be anything are often numbers as text, which MLflow parses for double
    columns (`pd.to_numeric`)."""

    def exactly(element: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
        return st.lists(element, min_size=count, max_size=count).map(tuple)

    general = exactly(elements(datatype, text))
    if datatype == "INT64":
        return st.one_of(exactly(st.sampled_from([0, 1])), general)
    if datatype == "BYTES" and text == "any":
        return st.one_of(exactly(_NUMERIC_TEXT.map(str.encode)), general)
    return general


@st.composite
def v2_input(
    draw: st.DrawFn,
    name: str,
    datatypes: st.SearchStrategy[str],
    shapes: st.SearchStrategy[tuple[int, ...]],
    text: str = "any",
) -> V2Input:
    datatype = draw(datatypes)
    shape = draw(shapes)
    return V2Input(name, datatype, shape, draw(values(datatype, math.prod(shape), text)))


@dataclass(frozen=True)
class Case:
    schema: Schema
    inputs: tuple[V2Input, ...]
    raw: bool

    def body(self) -> bytes:
        return request_bytes(self.inputs, self.raw)

    def describe(self) -> str:
        lines = [f"signature: {self.schema!r}", f"raw_input_contents: {self.raw}"]
        lines += [f"  input {t.describe()}" for t in self.inputs]
        return "\n".join(lines)


def assert_agree(case: Case, ours: Outcome, theirs: Outcome) -> None:
    """Both refuse (Arrowsmith with INVALID_ARGUMENT), or both accept with equal values."""
    report = f"{case.describe()}\nMLflow:     {theirs.describe()}\nArrowsmith: {ours.describe()}"
    if ours.refused != theirs.refused:
        raise AssertionError(f"Arrowsmith and MLflow disagree\n{report}")
    if ours.refused and not isinstance(ours.error, InvalidInputError):
        raise AssertionError(f"refused, but not with INVALID_ARGUMENT\n{report}")
    if not ours.refused:
        try:
            assert_same_value(ours.value, theirs.value)
        except AssertionError as error:
            raise AssertionError(f"different values: {error}\n{report}") from None


def outcome_key(test: str, ours: Outcome, theirs: Outcome) -> str:
    if ours.refused != theirs.refused:
        return f"{test}: DISAGREED"
    return f"{test}: both refused" if ours.refused else f"{test}: both accepted"


def outcomes(case: Case) -> tuple[Outcome, Outcome]:
    """(Arrowsmith's, MLflow's) answer to one case."""
    schema = case.schema
    oracle = oracle_tensors if schema.is_tensor_spec() else oracle_frame
    theirs = mlflow_side(lambda: _enforce_schema(oracle(case.inputs, schema), schema))
    ours = arrowsmith_side(lambda: arrowsmith_input(case.body(), loaded_model(schema)))
    return ours, theirs


def problem(case: Case, ours: Outcome, theirs: Outcome) -> str | None:
    """`assert_agree`'s complaint, for tests that list every disagreement they find."""
    try:
        assert_agree(case, ours, theirs)
    except AssertionError as error:
        return str(error)
    return None


def cycled(base: tuple[Any, ...], count: int) -> tuple[Any, ...]:
    return tuple(itertools.islice(itertools.cycle(base), count))


def fixed_values(datatype: str, text: str) -> list[tuple[Any, ...]]:
    """Values for the exhaustive pair tests: extremes, MLflow's special cases (0/1 in INT64,
    numbers as BYTES text), NaN and infinities."""
    if datatype == "BOOL":
        return [(True, False)]
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        return [(low, 0, high), (0, 1, 1)]
    if datatype in _FLOAT_WIDTHS:
        return [(0.5, math.nan, -math.inf), (1.0, 0.0, -2.0)]
    texts = {
        "datetime": [(b"2024-01-02", b"2024-02-29T12:30:00"), (b"not a date",)],
        "text": [("\u00e9t\u00e9".encode(), b"", b"x y")],
        "any": [(b"1.5", b"2", b" -3 "), (b"7", b"8"), ("\u00e9".encode(), b"\xff\x00")],
    }
    return texts[text]


# ---- column signatures --------------------------------------------------------------------

SCALAR_TYPES = ("boolean", "integer", "long", "float", "double", "string", "binary", "datetime")
OTHER_TYPES = (
    Array(DataType.double),
    Object([Property("p", DataType.long)]),
    Map(DataType.string),
    AnyType(),
)
#: The V2 datatype MLServer's metadata gives each column type.
NATURAL = {
    "boolean": "BOOL",
    "integer": "INT32",
    "long": "INT64",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}
#: Other datatypes MLflow converts to each column type (INT64 to float: 0/1 only; BYTES to
#: double: numbers as text, weighted up as MLflow's least obvious conversion).
CONVERTIBLE = {
    "boolean": ("BYTES",),
    "integer": ("INT8", "INT16", "UINT8", "UINT16"),
    "long": ("INT8", "INT16", "INT32", "UINT8", "UINT16", "UINT32"),
    "float": ("FP16", "INT64"),
    "double": (
        *("FP16", "FP32", "INT8", "INT16", "INT32", "UINT8", "UINT16", "UINT32", "INT64"),
        *("BYTES",) * 4,
    ),
}
#: Scalar types four times as likely as the others.
COLUMN_TYPES = tuple(DataType[name] for name in SCALAR_TYPES) * 4 + OTHER_TYPES
COLUMN_NAMES = ("a", "b", "c", "d", "e", "f")


def type_name(column_type: Any) -> str | None:
    """The scalar type's name; None for Array/Object/Map/AnyType."""
    return column_type.name if isinstance(column_type, DataType) else None


def column_datatypes(column_type: Any) -> st.SearchStrategy[str]:
    """Mostly the matching or a convertible datatype, sometimes any of the 13."""
    name = type_name(column_type)
    matching = st.just(NATURAL.get(name, "BYTES") if name else "BYTES")
    convertible = CONVERTIBLE.get(name or "", ())
    choices = [matching, matching, st.sampled_from(DATATYPES)]
    if convertible:
        choices.append(st.sampled_from(convertible))
    return st.one_of(choices)


def column_text(column_type: Any) -> str:
    name = type_name(column_type)
    if name is None:
        return "json" if column_type is not None else "any"
    return {"datetime": "datetime", "string": "text"}.get(name, "any")


def column_input(name: str, column_type: Any, rows: int) -> st.SearchStrategy[V2Input]:
    datatypes = (
        column_datatypes(column_type) if column_type is not None else st.sampled_from(DATATYPES)
    )
    shapes = st.sampled_from([(rows,), (rows, 1)])
    return v2_input(name, datatypes, shapes, column_text(column_type))


@st.composite
def column_cases(draw: st.DrawFn) -> Case:
    named = draw(st.sampled_from((True,) * 6 + (False,)))
    count = draw(st.integers(1, 6))
    names = draw(st.permutations(COLUMN_NAMES))[:count]
    column_types = [draw(st.sampled_from(COLUMN_TYPES)) for _ in names]
    specs = [
        ColSpec(
            column_type,
            name if named else None,
            required=not named or draw(st.sampled_from((True, True, True, False))),
        )
        for name, column_type in zip(names, column_types, strict=True)
    ]
    rows = draw(st.sampled_from((0, 1, 1, 2, 3, 4, 5)))
    inputs = draw_column_inputs(draw, specs, rows, column_input)
    return Case(Schema(specs), inputs, draw(st.booleans()))


def draw_column_inputs(
    draw: st.DrawFn,
    specs: list[ColSpec],
    rows: int,
    column_input: Callable[[str, Any, int], st.SearchStrategy[V2Input]],
    at_least_one: bool = False,
) -> tuple[V2Input, ...]:
    """Inputs for column `specs`: by name when they are named (some missing, some misnamed,
    in any order), else by position (one fewer to one more); then up to two extra inputs
    (one at least when `at_least_one` and none came before)."""
    named = specs[0].name is not None
    inputs = []
    if named:
        for spec in specs:
            fate = draw(st.sampled_from(("sent",) * 5 + ("missing", "renamed")))
            if fate != "missing":
                name = spec.name if fate == "sent" else spec.name.upper()
                inputs.append(draw(column_input(name, spec.type, rows)))
    else:
        count = len(specs)
        for position in range(draw(st.integers(count - 1, count + 1))):
            column_type = specs[position].type if position < count else None
            inputs.append(draw(column_input(f"input-{position}", column_type, rows)))
    fewest_extras = 1 if at_least_one and not inputs else 0
    for extra in range(draw(st.integers(fewest_extras, 2))):
        inputs.append(draw(column_input(f"extra-{extra}", None, rows)))
    if named:
        inputs = draw(st.permutations(inputs))
    return tuple(inputs)


def fed_unsupported_columns(case: Case) -> list[str]:
    """Array/Object/Map/AnyType columns that some input feeds (by name, or by position)."""
    specs = case.schema.inputs
    if case.schema.has_input_names():
        sent = {t.name for t in case.inputs}
        return [s.name for s in specs if type_name(s.type) is None and s.name in sent]
    return [
        case.inputs[i].name
        for i, s in enumerate(specs[: len(case.inputs)])
        if type_name(s.type) is None
    ]


@derandomized(1500)
@given(case=column_cases())
def test_column_signatures_enforced_as_mlflow_does(case: Case, tally: Counter[str]) -> None:
    ours, theirs = outcomes(case)
    unsupported = fed_unsupported_columns(case)
    if not unsupported:
        tally[outcome_key("columns", ours, theirs)] += 1
        assert_agree(case, ours, theirs)
        return
    mlflow_did = "refused" if theirs.refused else "accepted"
    tally[f"columns: known refusal (Array/Object/Map/Any column; MLflow {mlflow_did})"] += 1
    report = f"{case.describe()}\nMLflow: {theirs.describe()}\nArrowsmith: {ours.describe()}"
    assert ours.refused, f"Arrowsmith accepted an unsupported column\n{report}"
    if isinstance(ours.error, UnsupportedError):
        named = [n for n in unsupported if f"column '{n}'" in str(ours.error)]
        assert named, f"the refusal names none of {unsupported}\n{report}"
    else:
        assert isinstance(ours.error, InvalidInputError), report


@pytest.mark.parametrize("column_type", OTHER_TYPES, ids=lambda t: type(t).__name__)
def test_unsupported_column_refused_by_name(column_type: Any) -> None:
    """With every other column right, the refusal is UNIMPLEMENTED and names the column."""
    schema = Schema([ColSpec("double", "x"), ColSpec(column_type, "payload")])
    inputs = (
        V2Input("x", "FP64", (1,), (1.0,)),
        V2Input("payload", "BYTES", (1,), (b'{"p": 1}',)),
    )
    with pytest.raises(UnsupportedError, match="column 'payload'"):
        arrowsmith_input(request_bytes(inputs, raw=False), loaded_model(schema))


def test_every_column_type_with_every_datatype(tally: Counter[str]) -> None:
    """Each scalar column type against each V2 datatype, named and unnamed, with fixed values
    and empty: every disagreement is listed, not just the first."""
    problems = []
    cases = 0
    for column_type, datatype, named in itertools.product(SCALAR_TYPES, DATATYPES, (True, False)):
        text = column_text(DataType[column_type])
        for values_ in [*fixed_values(datatype, text), ()]:
            cases += 1
            shape = (len(values_),) if cases % 3 else (len(values_), 1)
            schema = Schema([ColSpec(column_type, "c" if named else None)])
            case = Case(schema, (V2Input("c", datatype, shape, values_),), raw=cases % 2 == 0)
            ours, theirs = outcomes(case)
            tally[outcome_key("column pairs", ours, theirs)] += 1
            if (complaint := problem(case, ours, theirs)) is not None:
                problems.append(complaint)
    assert not problems, f"{len(problems)} of {cases} cases disagree:\n\n" + "\n\n".join(problems)


# ---- tensor signatures --------------------------------------------------------------------

TENSOR_DTYPES = (*(d.name for d in NUMPY_DTYPES.values()), "str", "bytes", "object")
_V2_OF_DTYPE = {d.name: v2 for v2, d in NUMPY_DTYPES.items()}
TENSOR_NAMES = ("x", "y", "z")


def fitting_shapes(spec_shape: tuple[int, ...]) -> st.SearchStrategy[tuple[int, ...]]:
    dims = [st.integers(0, 3) if d == -1 else st.just(d) for d in spec_shape]
    return st.tuples(*dims)


ANY_SHAPE = st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple)


def tensor_input(name: str, spec: TensorSpec | None) -> st.SearchStrategy[V2Input]:
    if spec is None:
        return v2_input(name, st.sampled_from(DATATYPES), ANY_SHAPE)
    matching = st.just(_V2_OF_DTYPE.get(spec.type.name, "BYTES"))
    datatypes = st.one_of(matching, matching, st.sampled_from(DATATYPES))
    shapes = st.one_of(fitting_shapes(spec.shape), fitting_shapes(spec.shape), ANY_SHAPE)
    return v2_input(name, datatypes, shapes, "text" if spec.type.kind == "U" else "any")


@st.composite
def tensor_specs(draw: st.DrawFn, name: str | None) -> TensorSpec:
    rank = draw(st.integers(1, 3))
    first = draw(st.sampled_from((-1, -1, -1, 1, 2)))
    rest = [draw(st.sampled_from((-1, 1, 2, 3))) for _ in range(rank - 1)]
    return TensorSpec(np.dtype(draw(st.sampled_from(TENSOR_DTYPES))), (first, *rest), name)


@st.composite
def tensor_cases(draw: st.DrawFn) -> Case:
    named = draw(st.sampled_from((True, True, True, False)))
    if named:
        names = draw(st.permutations(TENSOR_NAMES))[: draw(st.integers(1, 3))]
        specs = [draw(tensor_specs(name)) for name in names]
        inputs = []
        for spec in specs:
            fate = draw(st.sampled_from(("sent",) * 6 + ("missing", "renamed")))
            if fate != "missing":
                name = spec.name if fate == "sent" else spec.name.upper()
                inputs.append(draw(tensor_input(name, spec)))
    else:
        specs = [draw(tensor_specs(None))]
        inputs = [draw(tensor_input("input-0", specs[0]))]
    for extra in range(draw(st.integers(0, 1))):
        inputs.append(draw(tensor_input(f"extra-{extra}", None)))
    if named:
        inputs = draw(st.permutations(inputs))
    return Case(Schema(specs), tuple(inputs), draw(st.booleans()))


@derandomized(900)
@given(case=tensor_cases())
def test_tensor_signatures_enforced_as_mlflow_does(case: Case, tally: Counter[str]) -> None:
    ours, theirs = outcomes(case)
    tally[outcome_key("tensors", ours, theirs)] += 1
    assert_agree(case, ours, theirs)


def test_every_tensor_dtype_with_every_datatype(tally: Counter[str]) -> None:
    """Each tensor dtype, in a few shapes (a ragged-looking one too), named and unnamed,
    against each V2 datatype in fitting and unfitting shapes: every disagreement listed."""
    problems = []
    cases = 0
    for dtype, spec_shape, named, datatype, shape in itertools.product(
        TENSOR_DTYPES,
        ((-1,), (-1, 2), (2, -1)),
        (True, False),
        DATATYPES,
        ((2,), (2, 2), (0,)),
    ):
        cases += 1
        text = "text" if np.dtype(dtype).kind == "U" else "any"
        values_ = cycled(fixed_values(datatype, text)[0], math.prod(shape))
        schema = Schema([TensorSpec(np.dtype(dtype), spec_shape, "t" if named else None)])
        case = Case(schema, (V2Input("t", datatype, shape, values_),), raw=cases % 2 == 0)
        ours, theirs = outcomes(case)
        tally[outcome_key("tensor pairs", ours, theirs)] += 1
        if (complaint := problem(case, ours, theirs)) is not None:
            problems.append(complaint)
    assert not problems, f"{len(problems)} of {cases} cases disagree:\n\n" + "\n\n".join(problems)


# ---- V2 requests MLflow cannot express ----------------------------------------------------

_INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"a\x80"])


def assert_refused_naming(body: bytes, schema: Schema, name: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        arrowsmith_input(body, loaded_model(schema))
    assert refused.value.input_name == name
    assert f"'{name}'" in refused.value.message


@derandomized(100)
@given(
    column_type=st.sampled_from(SCALAR_TYPES),
    shape=st.one_of(
        st.tuples(st.integers(0, 3), st.integers(2, 4)),
        st.tuples(st.integers(0, 3), st.just(1), st.integers(1, 3)),
    ),
    raw=st.booleans(),
    data=st.data(),
)
def test_wide_column_input_refused(column_type, shape, raw, data) -> None:
    """A column holds one value per row: [n, k > 1] and rank 3 have no DataFrame form."""
    datatype = NATURAL[column_type]
    text = column_text(DataType[column_type])
    wide = V2Input("w", datatype, shape, data.draw(values(datatype, math.prod(shape), text)))
    schema = Schema([ColSpec(column_type, "w")])
    assert_refused_naming(request_bytes([wide], raw), schema, "w")


@derandomized(100)
@given(
    column_types=st.tuples(st.sampled_from(SCALAR_TYPES), st.sampled_from(SCALAR_TYPES)),
    rows=st.tuples(st.integers(0, 4), st.integers(0, 4)).filter(lambda r: r[0] != r[1]),
    raw=st.booleans(),
    data=st.data(),
)
def test_columns_of_different_lengths_refused(column_types, rows, raw, data) -> None:
    inputs = []
    for name, column_type, n in zip(("p", "q"), column_types, rows, strict=True):
        datatype = NATURAL[column_type]
        column_values = data.draw(values(datatype, n, column_text(DataType[column_type])))
        inputs.append(V2Input(name, datatype, (n,), column_values))
    schema = Schema([ColSpec(t, n) for n, t in zip(("p", "q"), column_types, strict=True)])
    with pytest.raises(InvalidInputError) as refused:
        arrowsmith_input(request_bytes(inputs, raw), loaded_model(schema))
    assert refused.value.input_name in ("p", "q")
    assert f"'{refused.value.input_name}'" in refused.value.message


@derandomized(100)
@given(
    target=st.sampled_from(["string", "datetime", "str tensor"]),
    texts=st.lists(_TEXT.map(str.encode), max_size=3),
    bad=st.tuples(st.text(max_size=2), _INVALID_UTF8).map(lambda p: p[0].encode() + p[1]),
    raw=st.booleans(),
    data=st.data(),
)
def test_text_that_is_not_utf8_refused(target, texts, bad, raw, data) -> None:
    elements_ = data.draw(st.permutations([*texts, bad]))
    tensor = V2Input("t", "BYTES", (len(elements_),), tuple(elements_))
    if target == "str tensor":
        schema = Schema([TensorSpec(np.dtype(str), (-1,), "t")])
    else:
        schema = Schema([ColSpec(target, "t")])
    assert_refused_naming(request_bytes([tensor], raw), schema, "t")


# ---- params -------------------------------------------------------------------------------


class EchoFrame(mlflow.pyfunc.PythonModel):
    """Answers its input; only its saved signature matters here."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input


SAVED_PARAMS = {
    "s": "hello",
    "n": 3,
    "x": 0.5,
    "flag": True,
    "tags": ["a", "b"],
    "xs": [1.0, 2.5],
}
#: Names a request may carry: the declared ones, unknown ones, and those that steer the
#: server (which MLflow, declaring none of them, ignores too).
PARAM_NAMES = (
    *SAVED_PARAMS,
    "N",
    "unknown",
    "content_type",
    "headers",
    "priority",
    "timeout",
    "sequence_id",
    "binary_data_output",
    "triton_x",
)
_PARAM_VALUES = {
    "bool": st.booleans(),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "string": _TEXT,
    "double": st.floats(),
    "uint64": st.integers(0, 2**64 - 1),
}


@st.composite
def request_params(draw: st.DrawFn, names: tuple[str, ...]) -> tuple[V2Param, ...]:
    chosen = draw(st.lists(st.sampled_from(names), max_size=5, unique=True))
    params = []
    for name in chosen:
        kind = draw(st.sampled_from(tuple(_PARAM_VALUES)))
        params.append(V2Param(name, kind, draw(_PARAM_VALUES[kind])))
    return tuple(params)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two real pyfuncs, one with a ParamSchema of every kind (lists too), one without."""
    frame = pd.DataFrame({"x": [1.0]})
    signatures = {
        "with params": infer_signature(frame, frame, params=SAVED_PARAMS),
        "without params": infer_signature(frame, frame),
    }
    root = tmp_path_factory.mktemp("params-models")
    models = {}
    for label, signature in signatures.items():
        path = root / label.replace(" ", "-")
        mlflow.pyfunc.save_model(
            str(path), python_model=EchoFrame(), signature=signature, pip_requirements=[]
        )
        models[label] = mlflow.pyfunc.load_model(str(path))
    return models


def param_outcomes(params: tuple[V2Param, ...], pyfunc: Any) -> tuple[Outcome, Outcome]:
    """(Arrowsmith's params for the model, MLflow's) for one request."""
    schema = pyfunc.metadata.get_params_schema()
    model = loaded_model(
        pyfunc.metadata.get_input_schema(),
        pyfunc=pyfunc,
        param_names=None if schema is None else frozenset(p.name for p in schema.params),
    )
    request = _native.decode_request(request_bytes([], raw=False, params=params))
    python_params = {p.name: p.value for p in params} or None

    def ours() -> Any:
        try:
            return Outcome(value=enforce_params(model_params(request, model), pyfunc))
        except (ArrowsmithError, MlflowException) as error:
            return Outcome(error=error)

    return ours(), mlflow_side(lambda: _enforce_params_schema(python_params, schema))


def same_param_values(ours: Any, theirs: Any) -> bool:
    """Equal values of equal types (True is not 1, 3 is not 3.0); NaN equals NaN. Key order
    does not count: V2 parameters are a protobuf map, which has none."""
    if isinstance(theirs, dict):
        return (
            isinstance(ours, dict)
            and set(ours) == set(theirs)
            and all(same_param_values(ours[k], v) for k, v in theirs.items())
        )
    if isinstance(theirs, list):
        return (
            isinstance(ours, list)
            and len(ours) == len(theirs)
            and all(same_param_values(a, b) for a, b in zip(ours, theirs, strict=True))
        )
    if type(ours) is not type(theirs):
        return False
    if isinstance(theirs, float) and math.isnan(theirs):
        return math.isnan(ours)
    return bool(ours == theirs)


def assert_params_agree(params: tuple[V2Param, ...], schema: Any, pyfunc: Any) -> None:
    ours, theirs = param_outcomes(params, pyfunc)
    report = (
        f"ParamSchema: {schema!r}\nrequest parameters: {params!r}\n"
        f"MLflow:     {theirs.describe()}\nArrowsmith: {ours.describe()}"
    )
    assert ours.refused == theirs.refused, f"Arrowsmith and MLflow disagree\n{report}"
    if not ours.refused:
        assert same_param_values(ours.value, theirs.value), f"different params\n{report}"


@derandomized(300)
@given(label=st.sampled_from(["with params", "without params"]), data=st.data())
def test_params_of_saved_models(saved_models, label, data, tally: Counter[str]) -> None:
    pyfunc = saved_models[label]
    params = data.draw(request_params(PARAM_NAMES))
    ours, theirs = param_outcomes(params, pyfunc)
    tally[outcome_key("params (saved models)", ours, theirs)] += 1
    assert_params_agree(params, pyfunc.metadata.get_params_schema(), pyfunc)


_PARAM_SPEC_DEFAULTS = {
    "string": _TEXT,
    "long": st.integers(-(2**63), 2**63 - 1),
    "double": st.floats(allow_nan=False),
    "boolean": st.booleans(),
}


@st.composite
def param_schemas(draw: st.DrawFn) -> ParamSchema:
    names = draw(st.lists(st.sampled_from(("p", "q", "r", "s")), min_size=1, unique=True))
    specs = []
    for name in names:
        dtype = draw(st.sampled_from(tuple(_PARAM_SPEC_DEFAULTS)))
        default = _PARAM_SPEC_DEFAULTS[dtype]
        if draw(st.booleans()):
            specs.append(ParamSpec(name, dtype, draw(st.one_of(st.none(), default))))
        else:
            specs.append(ParamSpec(name, dtype, draw(st.lists(default, max_size=2)), (-1,)))
    return ParamSchema(specs)


@derandomized(300)
@given(schema=param_schemas(), data=st.data())
def test_params_of_random_param_schemas(schema, data, tally: Counter[str]) -> None:
    """Any pyfunc whose metadata declares `schema`: Arrowsmith reads nothing else of it."""
    signature = ModelSignature(inputs=Schema([ColSpec("double", "x")]), params=schema)
    pyfunc = types.SimpleNamespace(metadata=Model(signature=signature))
    params = data.draw(request_params(("p", "q", "r", "s", "P", "priority", "triton_x")))
    ours, theirs = param_outcomes(params, pyfunc)
    tally[outcome_key("params (random schemas)", ours, theirs)] += 1
    assert_params_agree(params, schema, pyfunc)
