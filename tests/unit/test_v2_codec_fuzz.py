"""Bodies the V2 REST codec's fuzzer (tests/fuzz/fuzz_v2_codec.py) found raising something
other than an ArrowsmithError, which the front would have answered with a 500.

The codec builds Arrowsmith's own protobuf messages, which cannot share a descriptor pool
with tritonclient's (imported by the test suite), so the bodies are parsed in a process of
their own."""

from __future__ import annotations

import json
import subprocess
import sys

PARSE = """
import json, sys
from arrowsmith.errors import ArrowsmithError
from arrowsmith.http.v2_codec import parse_infer_request
outcomes = []
for body, header_length in json.loads(sys.stdin.read()):
    try:
        parse_infer_request(body.encode("latin-1"), header_length, "m", "1")
        outcomes.append("parsed")
    except ArrowsmithError as error:
        outcomes.append(type(error).__name__)
    except Exception as error:
        outcomes.append(f"BUG {type(error).__name__}: {error}")
print(json.dumps(outcomes))
"""


def outcomes(cases: list[tuple[bytes, str | None]]) -> list[str]:
    payload = json.dumps([(body.decode("latin-1"), length) for body, length in cases])
    result = subprocess.run(
        [sys.executable, "-c", PARSE],
        input=payload,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)


def body(shape: list[int]) -> bytes:
    tensor = {"name": "a", "datatype": "FP32", "shape": shape, "data": []}
    return json.dumps({"inputs": [tensor]}).encode()


def test_dimensions_past_int64_are_refused_and_int64_max_parses() -> None:
    # Was: ValueError "Value out of range" from protobuf, setting the request's shape.
    cases = [(body([d, 0]), None) for d in (2**63, 2**64 - 1, 2**64 + 5)]
    cases.append((body([2**63 - 1, 0]), None))
    assert outcomes(cases) == ["InvalidInputError"] * 3 + ["parsed"]
