"""Writes the golden request bytes the Rust tests decode, built with tritonclient (a V2
client Arrowsmith did not write). Run from the repository root:
`.venv/bin/python rust/tests/data/make_golden.py`."""

from pathlib import Path

import numpy as np
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import _get_inference_request

HERE = Path(__file__).parent


def triton_request(inputs: list[tc.InferInput], request_id: str) -> bytes:
    """The exact request tritonclient's `infer` puts on the wire."""
    request = _get_inference_request(
        model_name="golden",
        inputs=inputs,
        model_version="",
        request_id=request_id,
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    return request.SerializeToString()


def main() -> None:
    floats = tc.InferInput("floats", [2, 3], "FP32")
    floats.set_data_from_numpy(np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, 7.0]], np.float32))
    words = tc.InferInput("words", [3], "BYTES")
    words.set_data_from_numpy(np.array([b"hello", b"", "w\u00f6rld".encode()], dtype=object))
    flags = tc.InferInput("flags", [2], "BOOL")
    flags.set_data_from_numpy(np.array([True, False]))
    (HERE / "tritonclient_raw.pb").write_bytes(triton_request([floats, words, flags], "raw-1"))

    typed = pb.ModelInferRequest(model_name="golden", id="typed-1")
    tensor = typed.inputs.add(name="ints", datatype="INT16", shape=[2, 2])
    tensor.contents.int_contents.extend([-32768, 0, 1, 32767])
    tensor.parameters["content_type"].string_param = "np"
    typed.parameters["threshold"].double_param = 0.5
    typed.outputs.add(name="output-0")
    (HERE / "typed_int16.pb").write_bytes(typed.SerializeToString())


if __name__ == "__main__":
    main()
