"""Arrowsmith as a wheel, made from the installation that runs, to be installed into each
model environment: the same code (and the same native build, which is abi3 and so serves
any CPython from 3.11 on) as the server, with its dependencies declared.

The wheel is made once per installation (its fingerprint: every file's path, size and
modification time) and kept in the environment cache."""

from __future__ import annotations

import base64
import hashlib
import os
import sysconfig
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import arrowsmith

#: The native module is built for the stable ABI of CPython 3.11 and later.
PYTHON_TAG = "cp311-abi3"


def _package_files() -> list[Path]:
    root = Path(arrowsmith.__file__).parent
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def fingerprint() -> str:
    """What identifies this installation of Arrowsmith: its version and its files."""
    root = Path(arrowsmith.__file__).parent
    sha = hashlib.sha256(arrowsmith.__version__.encode())
    for path in _package_files():
        stat = path.stat()
        sha.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"{arrowsmith.__version__}+{sha.hexdigest()[:16]}"


def _platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _metadata_text() -> str:
    """The installed distribution's METADATA (name, version, Requires-Dist)."""
    try:
        text = metadata.distribution("arrowsmith").read_text("METADATA")
    except metadata.PackageNotFoundError:
        text = None
    if not text:
        return f"Metadata-Version: 2.1\nName: arrowsmith\nVersion: {arrowsmith.__version__}\n"
    return text


def _entry_points_text() -> str:
    try:
        text = metadata.distribution("arrowsmith").read_text("entry_points.txt")
    except metadata.PackageNotFoundError:
        text = None
    return text or "[console_scripts]\narrowsmith=arrowsmith.cli:main\n"


def build_wheel(folder: Path) -> Path:
    """This installation as a wheel in `folder` (made unless it is there already)."""
    version = arrowsmith.__version__
    name = f"arrowsmith-{version}-{PYTHON_TAG}-{_platform_tag()}.whl"
    wheel = folder / name
    if wheel.is_file():
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"arrowsmith-{version}.dist-info"
    root = Path(arrowsmith.__file__).parent
    records = []
    descriptor, partial = tempfile.mkstemp(dir=folder, suffix=".partial")
    os.close(descriptor)
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:

        def add(arcname: str, data: bytes) -> None:
            archive.writestr(arcname, data)
            records.append(_record_line(arcname, data))

        for path in _package_files():
            add(f"arrowsmith/{path.relative_to(root).as_posix()}", path.read_bytes())
        add(f"{dist_info}/METADATA", _metadata_text().encode())
        add(f"{dist_info}/entry_points.txt", _entry_points_text().encode())
        wheel_file = (
            f"Wheel-Version: 1.0\nGenerator: arrowsmith {version}\n"
            f"Root-Is-Purelib: false\nTag: {PYTHON_TAG}-{_platform_tag()}\n"
        )
        add(f"{dist_info}/WHEEL", wheel_file.encode())
        record = "\n".join([*records, f"{dist_info}/RECORD,,"]) + "\n"
        archive.writestr(f"{dist_info}/RECORD", record)
    os.replace(partial, wheel)
    return wheel
