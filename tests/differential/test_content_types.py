"""Differential tests: requests with a request-level `content_type` (`pd`, `np` or `dict`, as
MLServer's codecs send them) against MLflow's enforcement of their inputs in that form.

MLflow's side is `_enforce_schema(as_sent, schema)`, where `as_sent` is what the content type
hands MLflow (v2_oracle's `as_sent_value`): `pd` a DataFrame of one column per input (shape
[n, 1] flattened), `np` the first input's array, `dict` name -> array; BYTES as an object
array of bytes, or of str for an input marked `content_type: str`. A value that cannot be
built (text that is not UTF-8, columns of different lengths) is a refusal.

Arrowsmith's side is `payload.model_input(_native.decode_request(body), model)`. Where the
native side enforced the signature (the job's form is `columns` or `tensors`) that value is
final; otherwise the value as sent reaches `PyFuncModel.predict`, which enforces the schema
itself and turns any exception into INVALID_ARGUMENT, so `_enforce_schema` is applied here
too. They agree when both refuse or both accept equal values (v2_oracle's
`assert_same_value`). Requests always carry an input: one without any is refused before a
form is chosen.

Signatures and requests are drawn from test_enforcement.py's strategies (the same values),
with the content type, per-input `content_type` marks and shapes a frame cannot hold on top.
The tally counts the cases by the path Arrowsmith took (native or as sent) and outcome.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from arrowsmith import _native, payload
from arrowsmith.errors import ArrowsmithError, InvalidInputError
from arrowsmith.models.loaded import LoadedModel
from hypothesis import given
from hypothesis import strategies as st
from mlflow.models.utils import _enforce_schema
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from test_enforcement import (
    COLUMN_NAMES,
    COLUMN_TYPES,
    SCALAR_TYPES,
    TENSOR_DTYPES,
    column_datatypes,
    column_text,
    cycled,
    draw_column_inputs,
    fixed_values,
    tensor_cases,
    v2_input,
)
from v2_oracle import (
    DATATYPES,
    Outcome,
    V2Input,
    V2Param,
    as_sent_value,
    assert_same_value,
    derandomized,
    loaded_model,
    mlflow_side,
    request_bytes,
    with_input_content_types,
)

FORMS = ("pd", "np", "dict")
#: The job forms of the native enforcement; any other form is the value as sent.
NATIVE_FORMS = ("columns", "tensors")


@dataclass(frozen=True)
class Request:
    schema: Schema
    inputs: tuple[V2Input, ...]
    form: str
    #: Inputs' own `content_type` parameters, by input name.
    marks: tuple[tuple[str, str], ...]
    raw: bool

    def body(self) -> bytes:
        params = [V2Param("content_type", "string", self.form)]
        return with_input_content_types(
            request_bytes(self.inputs, self.raw, params), dict(self.marks)
        )

    def text_inputs(self) -> frozenset[str]:
        return frozenset(name for name, kind in self.marks if kind == "str")

    def describe(self) -> str:
        lines = [
            f"signature: {self.schema!r}",
            f"content_type: {self.form}, raw_input_contents: {self.raw}",
        ]
        marks = dict(self.marks)
        for t in self.inputs:
            mark = f" (content_type {marks[t.name]})" if t.name in marks else ""
            lines.append(f"  input {t.describe()}{mark}")
        return "\n".join(lines)


def arrowsmith_path(request: Request, model: LoadedModel) -> str:
    """`native` when Arrowsmith enforced the signature itself, `as sent` when MLflow does.
    A refusal at admission is the native enforcement's: the request has inputs and a valid
    content type, the only reasons the path of the value as sent refuses there."""
    decoded = _native.decode_request(request.body())
    try:
        form = decoded.job(model.signature).as_batch().form
    except ArrowsmithError:
        return "native"
    return "native" if form in NATIVE_FORMS else "as sent"


def arrowsmith_outcome(request: Request, model: LoadedModel) -> Outcome:
    """What the model would be called with: the native enforcement's value, or MLflow's
    enforcement (as `PyFuncModel.predict` runs it) of the value as sent."""
    try:
        value, enforced = payload.model_input(_native.decode_request(request.body()), model)
    except ArrowsmithError as error:
        return Outcome(error=error)
    if enforced:
        return Outcome(value=value)
    return mlflow_side(lambda: _enforce_schema(value, model.input_schema))


def mlflow_outcome(request: Request) -> Outcome:
    schema = request.schema
    return mlflow_side(
        lambda: _enforce_schema(
            as_sent_value(request.inputs, request.text_inputs(), request.form), schema
        )
    )


def check(request: Request, tally: Counter[str], test: str) -> str | None:
    """Runs one request through both sides and tallies it; the disagreement, if any."""
    model = loaded_model(request.schema)
    path = arrowsmith_path(request, model)
    ours, theirs = arrowsmith_outcome(request, model), mlflow_outcome(request)
    report = (
        f"{request.describe()}\nArrowsmith's path: {path}\n"
        f"MLflow:     {theirs.describe()}\nArrowsmith: {ours.describe()}"
    )
    if ours.refused != theirs.refused:
        tally[f"{test}: {path}, DISAGREED"] += 1
        return f"Arrowsmith and MLflow disagree\n{report}"
    tally[f"{test}: {path}, both {'refused' if ours.refused else 'accepted'}"] += 1
    if ours.refused:
        # Arrowsmith's own refusals must be INVALID_ARGUMENT; MLflow's, on the path as sent,
        # become INVALID_ARGUMENT in predict.
        own = isinstance(ours.error, ArrowsmithError)
        if own and not isinstance(ours.error, InvalidInputError):
            return f"refused, but not with INVALID_ARGUMENT\n{report}"
        return None
    try:
        assert_same_value(ours.value, theirs.value)
    except AssertionError as error:
        return f"different values: {error}\n{report}"
    return None


def assert_agree(request: Request, tally: Counter[str], test: str) -> None:
    if (complaint := check(request, tally, test)) is not None:
        raise AssertionError(complaint)


# ---- strategies -----------------------------------------------------------------------------


def forms(matching: str) -> st.SearchStrategy[str]:
    """Mostly the form the signature produces anyway, sometimes another."""
    return st.sampled_from((matching,) * 4 + FORMS)


@st.composite
def input_marks(draw: st.DrawFn, inputs: tuple[V2Input, ...]) -> tuple[tuple[str, str], ...]:
    """Per-input `content_type` parameters: often `str` on BYTES (MLServer's mark for text),
    now and then on any input, or MLServer's `np`."""
    marks = []
    for tensor in inputs:
        choices = ("str", "str", None) if tensor.datatype == "BYTES" else (None,) * 6
        kind = draw(st.sampled_from((*choices, "str", "np")))
        if kind is not None:
            marks.append((tensor.name, kind))
    return tuple(marks)


def column_shapes(rows: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Mostly a column ([n] or [n, 1]); sometimes wider rows, rank 3 or another row count."""
    column = st.sampled_from([(rows,), (rows, 1)])
    other = st.sampled_from([(rows, 2), (rows, 1, 2), (rows + 1,), (rows + 1, 1)])
    return st.one_of(column, column, column, column, column, other)


def column_input(name: str, column_type: Any, rows: int) -> st.SearchStrategy[V2Input]:
    datatypes = (
        column_datatypes(column_type) if column_type is not None else st.sampled_from(DATATYPES)
    )
    return v2_input(name, datatypes, column_shapes(rows), column_text(column_type))


@st.composite
def column_requests(draw: st.DrawFn) -> Request:
    named = draw(st.sampled_from((True,) * 4 + (False,)))
    count = draw(st.integers(1, 4))
    names = draw(st.permutations(COLUMN_NAMES))[:count]
    specs = [
        ColSpec(
            draw(st.sampled_from(COLUMN_TYPES)),
            name if named else None,
            required=not named or draw(st.sampled_from((True, True, True, False))),
        )
        for name in names
    ]
    rows = draw(st.sampled_from((0, 1, 1, 2, 3)))
    sent = draw_column_inputs(draw, specs, rows, column_input, at_least_one=True)
    return Request(
        Schema(specs), sent, draw(forms("pd")), draw(input_marks(sent)), draw(st.booleans())
    )


@st.composite
def tensor_requests(draw: st.DrawFn) -> Request:
    case = draw(tensor_cases().filter(lambda c: c.inputs))
    matching = "dict" if case.schema.has_input_names() else "np"
    marks = draw(input_marks(case.inputs))
    return Request(case.schema, case.inputs, draw(forms(matching)), marks, case.raw)


# ---- tests ----------------------------------------------------------------------------------


@derandomized(2400)
@given(request=column_requests())
def test_column_signatures_with_a_content_type(request: Request, tally: Counter[str]) -> None:
    assert_agree(request, tally, "content types, columns")


@derandomized(1600)
@given(request=tensor_requests())
def test_tensor_signatures_with_a_content_type(request: Request, tally: Counter[str]) -> None:
    assert_agree(request, tally, "content types, tensors")


def test_every_column_type_with_every_datatype_as_pd(tally: Counter[str]) -> None:
    """Each scalar column type against each V2 datatype, named and unnamed, as [n] and
    [n, 1], marked `str` or not, with fixed values and empty: every disagreement listed."""
    problems = []
    cases = 0
    for column_type, datatype, named, marked in itertools.product(
        SCALAR_TYPES, DATATYPES, (True, False), (True, False)
    ):
        text = column_text(DataType[column_type])
        for values in [*fixed_values(datatype, text), ()]:
            cases += 1
            shape = (len(values),) if cases % 3 else (len(values), 1)
            request = Request(
                Schema([ColSpec(column_type, "c" if named else None)]),
                (V2Input("c", datatype, shape, values),),
                "pd",
                (("c", "str"),) if marked else (),
                raw=cases % 2 == 0,
            )
            if (complaint := check(request, tally, "content types, column pairs")) is not None:
                problems.append(complaint)
    assert not problems, f"{len(problems)} of {cases} cases disagree:\n\n" + "\n\n".join(problems)


def test_every_tensor_dtype_with_every_datatype(tally: Counter[str]) -> None:
    """Each tensor dtype, named (`dict`) and unnamed (`np`), in fitting and unfitting shapes,
    against each V2 datatype, marked `str` or not: every disagreement listed."""
    problems = []
    cases = 0
    for dtype, spec_shape, named, datatype, shape, marked in itertools.product(
        TENSOR_DTYPES,
        ((-1,), (-1, 2)),
        (True, False),
        DATATYPES,
        ((2,), (2, 2), (0,)),
        (True, False),
    ):
        cases += 1
        text = "text" if np.dtype(dtype).kind == "U" else "any"
        values = cycled(fixed_values(datatype, text)[0], math.prod(shape))
        request = Request(
            Schema([TensorSpec(np.dtype(dtype), spec_shape, "t" if named else None)]),
            (V2Input("t", datatype, shape, values),),
            "dict" if named else "np",
            (("t", "str"),) if marked else (),
            raw=cases % 2 == 0,
        )
        if (complaint := check(request, tally, "content types, tensor pairs")) is not None:
            problems.append(complaint)
    assert not problems, f"{len(problems)} of {cases} cases disagree:\n\n" + "\n\n".join(problems)


@pytest.mark.parametrize(
    ("schema", "inputs", "form"),
    [
        (
            Schema([ColSpec("double", "a"), ColSpec("long", "b")]),
            (V2Input("b", "INT64", (2, 1), (1, 2)), V2Input("a", "FP64", (2, 1), (0.5, 1.5))),
            "pd",
        ),
        (
            Schema([TensorSpec(np.dtype("uint8"), (-1, 2))]),
            (V2Input("input-0", "UINT8", (1, 2), (3, 4)),),
            "np",
        ),
        (
            Schema(
                [TensorSpec(np.dtype("float32"), (-1,), "x"), TensorSpec(np.dtype("O"), (-1,), "y")]
            ),
            (V2Input("y", "BYTES", (1,), (b"b",)), V2Input("x", "FP32", (1,), (0.5,))),
            "dict",
        ),
    ],
    ids=FORMS,
)
def test_what_mlservers_codecs_send_is_enforced_natively(schema, inputs, form) -> None:
    """The requests MLServer's codecs send for these signatures take the native path."""
    request = Request(schema, inputs, form, (), raw=True)
    model = loaded_model(schema)
    assert arrowsmith_path(request, model) == "native"
    assert payload.model_input(_native.decode_request(request.body()), model)[1]
