"""V2 REST inference bodies to ModelInferRequest bytes, and ModelInferResponse bytes back:
JSON tensors (`data` nested or flat) and Triton's binary tensor extension (a JSON header of
`Inference-Header-Content-Length` bytes, then the raw tensors). Every input becomes
`raw_input_contents`, so the native decoder sees what a gRPC client would send; an input
in a shared memory region stays there, for the decoder to read, and an output written into
one is answered without data."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from arrowsmith._proto import grpc_service_pb2 as pb
from arrowsmith.errors import InvalidInputError
from arrowsmith.tensors import (
    NUMPY_DTYPES,
    as_text,
    pack_bytes,
    parameters_dict,
    set_parameters,
    unpack_bytes,
)

HEADER_LENGTH = "inference-header-content-length"
#: The parameter naming the shared memory region a tensor's values are in (or go to).
SHARED_MEMORY_REGION = "shared_memory_region"

_INTEGER_KINDS = "iu"
_NUMBER_KINDS = "iuf"


@dataclass(frozen=True)
class OutputForm:
    """Which outputs the client wants as binary: by name, and for the ones not named."""

    binary: dict[str, bool]
    default_binary: bool

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)


def _json_header(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInputError(
            f"Inference-Header-Content-Length '{header_length}' is not a number"
        ) from None
    if not 0 <= length <= len(body):
        raise InvalidInputError(
            f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes"
        )
    return body[:length], memoryview(body)[length:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object")
    return dict(value)


def _flat(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flat(item)
    else:
        yield data


def _bytes_raw(name: str, data: Any, count: int) -> bytes:
    items = list(_flat(data))
    if len(items) != count:
        raise InvalidInputError(
            f"input '{name}' has {len(items)} values; its shape needs {count}", name
        )
    if not all(isinstance(item, str) for item in items):
        raise InvalidInputError(f"input '{name}' is BYTES: its data must be strings", name)
    return pack_bytes(item.encode() for item in items)


def _numeric_array(name: str, datatype: str, data: Any) -> np.ndarray[Any, Any]:
    """The JSON values as numpy, refusing what the datatype cannot hold without loss of
    meaning (text, fractions in integers, out-of-range integers, numbers as booleans)."""
    dtype = NUMPY_DTYPES[datatype]
    try:
        array = np.asarray(data)
        if array.size == 0:
            return array.astype(dtype)
        kind = array.dtype.kind
        if datatype == "BOOL":
            if kind != "b":
                raise InvalidInputError(f"input '{name}' is BOOL: its data must be true/false")
        elif dtype.kind in _INTEGER_KINDS:
            if kind not in _INTEGER_KINDS:
                raise InvalidInputError(f"input '{name}' is {datatype}: its data must be integers")
            limits = np.iinfo(dtype)
            if array.min() < limits.min or array.max() > limits.max:
                raise InvalidInputError(f"input '{name}' has values out of the {datatype} range")
        elif kind == "O":
            # JSON null in a float tensor: NaN, as MLServer reads it.
            array = np.asarray(data, dtype=dtype)
        elif kind not in _NUMBER_KINDS:
            raise InvalidInputError(f"input '{name}' is {datatype}: its data must be numbers")
        return array.astype(dtype, copy=False)
    except (ValueError, TypeError) as error:
        raise InvalidInputError(
            f"input '{name}' does not hold {datatype} values: {error}"
        ) from None


def _json_raw(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    count = math.prod(shape)
    if data is None:
        raise InvalidInputError(f"input '{name}' has neither data nor binary_data_size", name)
    if datatype == "BYTES":
        return _bytes_raw(name, data, count)
    if datatype not in NUMPY_DTYPES:
        raise InvalidInputError(
            f"input '{name}' has datatype '{datatype}', which JSON cannot carry "
            f"(use one of {', '.join([*NUMPY_DTYPES, 'BYTES'])}, or binary data)",
            name,
        )
    array = _numeric_array(name, datatype, data)
    if array.size != count:
        raise InvalidInputError(
            f"input '{name}' has {array.size} values; its shape {shape} needs {count}", name
        )
    return array.tobytes()


def _shape(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
        # A dimension is an int64 on the wire.
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63
        for d in value
    ):
        raise InvalidInputError(f"input '{name}' needs a shape of non-negative integers", name)
    return value


def parse_infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str
) -> tuple[bytes, OutputForm]:
    """A V2 REST infer body as ModelInferRequest bytes, and how the outputs go back."""
    header, binary = _json_header(body, header_length)
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as error:
        raise InvalidInputError(f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInputError("the request body must be a JSON object")
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError("the request id must be a string")
    request.id = request_id
    parameters = _object(document.get("parameters"), "the request parameters")
    default_binary = bool(parameters.get("binary_data_output", False))
    set_parameters(request.parameters, parameters, "request")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("the request needs a non-empty list of inputs")
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError("each input must be an object with a name")
        name = item["name"]
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInputError(f"input '{name}' needs a datatype", name)
        shape = _shape(name, item.get("shape"))
        input_parameters = _object(item.get("parameters"), f"the parameters of input '{name}'")
        size = input_parameters.pop("binary_data_size", None)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        set_parameters(tensor.parameters, input_parameters, f"input '{name}'")
        if SHARED_MEMORY_REGION in input_parameters:
            # The values lie in a shared memory region: the decoder reads them there.
            if size is not None or "data" in item:
                raise InvalidInputError(
                    f"input '{name}' carries data and names a shared memory region; its "
                    "values come from one or the other",
                    name,
                )
            continue
        if size is None:
            request.raw_input_contents.append(_json_raw(name, datatype, shape, item.get("data")))
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInputError(
                f"input '{name}': binary_data_size {size} does not fit the "
                f"{len(binary) - offset} binary bytes left",
                name,
            )
        if "data" in item:
            raise InvalidInputError(f"input '{name}' has both data and binary_data_size", name)
        request.raw_input_contents.append(bytes(binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise InvalidInputError(
            f"{len(binary) - offset} bytes of binary data follow the last binary input"
        )
    binary_outputs = {}
    for item in document.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError("each requested output must be an object with a name")
        output_parameters = _object(item.get("parameters"), f"output '{item['name']}'")
        binary_outputs[item["name"]] = bool(output_parameters.pop("binary_data", default_binary))
        output = request.outputs.add(name=item["name"])
        set_parameters(output.parameters, output_parameters, f"output '{item['name']}'")
    return request.SerializeToString(), OutputForm(binary_outputs, default_binary)


def _json_data(datatype: str, raw: bytes, parameters: dict[str, Any]) -> Any:
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype])
    items = unpack_bytes(raw)
    text = as_text(items)
    if text is not None:
        return text
    parameters["content_type"] = "base64"
    return [base64.b64encode(item).decode() for item in items]


def render_infer_response(data: bytes, form: OutputForm) -> tuple[bytes, int | None]:
    """ModelInferResponse bytes as a V2 REST body, and the JSON header's length when binary
    tensors follow it."""
    response = pb.ModelInferResponse.FromString(data)
    document: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        document["model_version"] = response.model_version
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = parameters_dict(response.parameters)
    outputs = []
    binary_parts = []
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        parameters = parameters_dict(output.parameters)
        if SHARED_MEMORY_REGION in parameters:
            # Written into the region the client named: nothing to carry here.
            pass
        elif form.is_binary(output.name):
            parameters["binary_data_size"] = len(raw)
            binary_parts.append(raw)
        else:
            entry["data"] = _json_data(output.datatype, raw, parameters)
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return header, None
    return b"".join([header, *binary_parts]), len(header)
