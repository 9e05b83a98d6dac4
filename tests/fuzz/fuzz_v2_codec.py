"""atheris (libFuzzer for Python) target: V2 REST infer bodies through `parse_infer_request`,
JSON tensors and Triton's binary extension with its `Inference-Header-Content-Length`.

Contract: a body is either parsed into ModelInferRequest bytes, which the native decoder
then either decodes or refuses with an ArrowsmithError, or it is refused with an
ArrowsmithError (which the front answers with a 4xx). Any other exception is a bug.

Run: python tests/fuzz/fuzz_v2_codec.py [libFuzzer flags] [corpus dirs]
(`make fuzz` runs it from tests/fuzz/corpus/v2_codec). Not collected by pytest.

Each input is read in one of two ways, chosen by its first byte: as raw bytes (a selector
for the header length, then the body, for libFuzzer's mutations to work on the JSON text),
or as a recipe for a JSON document built from values chosen to sit at the edges (huge and
negative integers, floats, nulls, nested lists, strings where numbers go, binary parts).
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import atheris

# Only Arrowsmith's own modules are instrumented: the libraries' coverage would slow every
# execution and guide nothing.
import numpy  # noqa: F401
import orjson  # noqa: F401
from arrowsmith._proto import grpc_service_pb2  # noqa: F401

with atheris.instrument_imports(include=["arrowsmith"]):
    from arrowsmith import _native
    from arrowsmith.errors import ArrowsmithError
    from arrowsmith.http.v2_codec import parse_infer_request

DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "fp32",
    "",
]
KEYS = ["binary_data_size", "binary_data", "binary_data_output", "content_type", "x", ""]
EDGE_INTS = [
    0,
    1,
    -1,
    2,
    255,
    256,
    -129,
    2**31,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63) - 1,
]


def scalar(fdp: atheris.FuzzedDataProvider) -> Any:
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice == 0:
        return fdp.PickValueInList(EDGE_INTS)
    if choice == 1:
        return fdp.ConsumeIntInRange(-300, 300)
    if choice == 2:
        return fdp.ConsumeRegularFloat()
    if choice == 3:
        return fdp.ConsumeBool()
    if choice == 4:
        return None
    if choice == 5:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 6))
    if choice == 6:
        return fdp.ConsumeInt(9)
    if choice == 7:
        return {}
    if choice == 8:
        return fdp.ConsumeProbability()
    return []


def data(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    if depth < 3 and fdp.ConsumeIntInRange(0, 2) == 0:
        return [data(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if fdp.ConsumeBool():
        return [scalar(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    return scalar(fdp)


def parameters(fdp: atheris.FuzzedDataProvider) -> Any:
    if fdp.ConsumeIntInRange(0, 5) == 0:
        return scalar(fdp)
    return {fdp.PickValueInList(KEYS): scalar(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))}


def shape(fdp: atheris.FuzzedDataProvider) -> Any:
    if fdp.ConsumeIntInRange(0, 7) == 0:
        return scalar(fdp)
    dims = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        dims.append(fdp.ConsumeIntInRange(0, 4) if fdp.ConsumeBool() else scalar(fdp))
    return dims


def tensor(fdp: atheris.FuzzedDataProvider) -> Any:
    item: dict[str, Any] = {}
    for key in ("name", "datatype", "shape", "data", "parameters"):
        if fdp.ConsumeIntInRange(0, 9) == 0:
            continue
        if key == "name":
            item[key] = (
                fdp.PickValueInList(["a", "b", "", "é"]) if fdp.ConsumeBool() else scalar(fdp)
            )
        elif key == "datatype":
            item[key] = fdp.PickValueInList(DATATYPES) if fdp.ConsumeBool() else scalar(fdp)
        elif key == "shape":
            item[key] = shape(fdp)
        elif key == "data":
            item[key] = data(fdp)
        else:
            item[key] = parameters(fdp)
    return item


def document(fdp: atheris.FuzzedDataProvider) -> Any:
    doc: dict[str, Any] = {}
    if fdp.ConsumeBool():
        doc["id"] = scalar(fdp)
    if fdp.ConsumeBool():
        doc["parameters"] = parameters(fdp)
    doc["inputs"] = [tensor(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if fdp.ConsumeBool():
        doc["outputs"] = [
            {"name": scalar(fdp), "parameters": parameters(fdp)}
            if fdp.ConsumeBool()
            else scalar(fdp)
            for _ in range(fdp.ConsumeIntInRange(0, 2))
        ]
    return doc


def header_length(fdp: atheris.FuzzedDataProvider, json_length: int) -> str | None:
    choice = fdp.ConsumeIntInRange(0, 5)
    if choice == 0:
        return None
    if choice == 1:
        return str(json_length)
    if choice == 2:
        return str(json_length + fdp.ConsumeIntInRange(-3, 3))
    if choice == 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8))
    if choice == 4:
        return str(fdp.PickValueInList(EDGE_INTS))
    return fdp.PickValueInList([" 5", "5 ", "+5", "0x10", "1_0", "٣", "-0", "1e3", ""])


def raw_header_length(selector: int, body: bytes) -> str | None:
    choice = selector % 4
    if choice == 0:
        return None
    if choice == 1:
        return str(len(body))
    if choice == 2:
        return str(selector >> 2)
    # The JSON header ends at the last closing brace: the binary extension's usual split.
    return str(body.rfind(b"}") + 1)


def body_and_header(data_bytes: bytes) -> tuple[bytes, str | None]:
    """First byte even: the rest is a header-length selector byte and the body as is (the
    committed seeds are of this kind). Odd: the rest is a recipe for a document."""
    if len(data_bytes) < 2:
        return data_bytes, None
    if data_bytes[0] % 2 == 0:
        body = data_bytes[2:]
        return body, raw_header_length(data_bytes[1], body)
    fdp = atheris.FuzzedDataProvider(data_bytes[1:])
    header = json.dumps(document(fdp)).encode()
    length = header_length(fdp, len(header))
    binary = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)) if length is not None else b""
    return header + binary, length


def check(body: bytes, length: str | None) -> None:
    """The contract: an ArrowsmithError or a request the native decoder accepts or refuses
    with one."""
    try:
        request, _form = parse_infer_request(body, length, "m", "1")
    except ArrowsmithError:
        return
    try:
        _native.decode_request(request)
    except ArrowsmithError:
        return


def one_input(data_bytes: bytes) -> None:
    body, length = body_and_header(data_bytes)
    check(body, length)


def main() -> None:
    # numpy warns when a JSON number overflows FP16/FP32 (it becomes inf): a warning, not an
    # exception, so not what this target looks for; printed at every execution it would
    # drown libFuzzer's output.
    warnings.simplefilter("ignore", RuntimeWarning)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
