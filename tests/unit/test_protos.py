"""The committed Python messages are exactly what `make protos` generates from
protos/grpc_service.proto, so the wire contract has one source, and that source agrees with
Triton's protos wherever they overlap."""

import pathlib
import subprocess
import sys
from collections.abc import Iterable, Iterator

from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED = ROOT / "python" / "arrowsmith" / "_proto"


def test_generated_messages_are_up_to_date(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(ROOT / "protos" / "grpc_service.proto"),
        ],
        check=True,
    )
    for name in ("grpc_service_pb2.py", "grpc_service_pb2.pyi"):
        assert (tmp_path / name).read_bytes() == (GENERATED / name).read_bytes(), (
            f"{name} is stale: run `make protos`"
        )


# Fields Arrowsmith adds to Triton's messages (MLServer's and the OIP's extensions), with the
# map-entry messages protoc makes for them.
OURS_ONLY = {
    "inference.ModelMetadataResponse.properties",
    "inference.ModelMetadataResponse.PropertiesEntry",
    "inference.ModelMetadataResponse.TensorMetadata.parameters",
    "inference.ModelMetadataResponse.TensorMetadata.ParametersEntry",
}


def _messages(
    messages: Iterable[descriptor_pb2.DescriptorProto], prefix: str
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from _messages(message.nested_type, name)


def test_messages_match_tritons_on_the_wire(tmp_path: pathlib.Path) -> None:
    """Every message, field and enum value ours shares with tritonclient's copies of Triton's
    protos (grpc_service.proto, model_config.proto) has Triton's number, type and
    cardinality, so either side parses the other's bytes; only our extensions are extra."""
    descriptor_set = tmp_path / "grpc_service.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--descriptor_set_out={descriptor_set}",
            str(ROOT / "protos" / "grpc_service.proto"),
        ],
        check=True,
    )
    # Read from protoc's output, not imported: ours and Triton's share full names, so they
    # cannot sit in one descriptor pool.
    (ours,) = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    triton = service_pb2.DESCRIPTOR.pool
    extra = set()
    for name, message in _messages(ours.message_type, ours.package):
        try:
            theirs = triton.FindMessageTypeByName(name)
        except KeyError:
            extra.add(name)
            continue
        for field in message.field:
            their_field = theirs.fields_by_name.get(field.name)
            if their_field is None:
                extra.add(f"{name}.{field.name}")
                continue
            their_type = their_field.message_type or their_field.enum_type
            assert (
                field.number,
                field.type,
                field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                field.type_name.lstrip("."),
            ) == (
                their_field.number,
                their_field.type,
                their_field.is_repeated,
                their_type.full_name if their_type is not None else "",
            ), f"{name}.{field.name}"
    assert extra == OURS_ONLY
    for enum in ours.enum_type:
        theirs_enum = triton.FindEnumTypeByName(f"{ours.package}.{enum.name}")
        assert [(v.name, v.number) for v in enum.value] == [
            (v.name, v.number) for v in theirs_enum.values
        ]
