"""The tripmesh.v1 API contract: fresh stubs, buf-style conventions, buf lint, and a working `pip install .`.

- The stubs in protos/tripmesh/v1 are what protos/generate.py makes from the .proto files today.
- Every enum's zero value is <ENUM_NAME>_UNSPECIFIED and every value carries the prefix; every RPC has
  a request and a response message of its own; every RPC's comment lists the codes it returns.
- `buf lint` (STANDARD, see buf.yaml) passes.
- `pip install .` of a tree without generated stubs ships them: tripmesh.v1 imports from the
  installed copy alone, with the source tree nowhere on sys.path.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor, MethodDescriptor

pytestmark = pytest.mark.contract

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
PACKAGE_DIR = PROTO_ROOT / "tripmesh" / "v1"
PROTO_FILES = sorted(PACKAGE_DIR.glob("*.proto"))
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tripmesh_generate", PROTO_ROOT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub_names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.endswith(STUB_SUFFIXES)}


def _file_descriptors() -> list[FileDescriptor]:
    files = []
    for proto in PROTO_FILES:
        module = importlib.import_module(f"tripmesh.v1.{proto.stem}_pb2")
        files.append(module.DESCRIPTOR)
    return files


def _all_enums(file: FileDescriptor) -> Iterator[EnumDescriptor]:
    def nested(message: Descriptor) -> Iterator[EnumDescriptor]:
        yield from message.enum_types
        for inner in message.nested_types:
            yield from nested(inner)

    yield from file.enum_types_by_name.values()
    for message in file.message_types_by_name.values():
        yield from nested(message)


def _all_methods() -> list[MethodDescriptor]:
    return [
        method
        for file in _file_descriptors()
        for service in file.services_by_name.values()
        for method in service.methods
    ]


def upper_snake(name: str) -> str:
    """'ReservationStatus' -> 'RESERVATION_STATUS' (as buf's ENUM_VALUE_PREFIX spells it)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).upper()


def test_the_package_has_the_expected_protos() -> None:
    assert [p.name for p in PROTO_FILES] == [
        "car_service.proto",
        "common.proto",
        "flight_service.proto",
        "hotel_service.proto",
        "notification_service.proto",
        "payment_service.proto",
        "trip_coordinator.proto",
    ]


def test_generated_stubs_are_not_stale(tmp_path: Path) -> None:
    written = _generate_module().generate(tmp_path)
    fresh_dir = tmp_path / "tripmesh" / "v1"
    assert written, "generate() wrote nothing"
    assert _stub_names(PACKAGE_DIR) == _stub_names(fresh_dir), "run `make protos`"
    stale = [
        name
        for name in sorted(_stub_names(fresh_dir))
        if (PACKAGE_DIR / name).read_bytes() != (fresh_dir / name).read_bytes()
    ]
    assert not stale, f"stale generated stubs (run `make protos`): {stale}"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ReservationStatus", "RESERVATION_STATUS"),
        ("Cabin", "CABIN"),
        ("HTTPStatus", "HTTP_STATUS"),
        ("StepV2Action", "STEP_V2_ACTION"),
    ],
)
def test_upper_snake(name: str, expected: str) -> None:
    assert upper_snake(name) == expected


def test_every_enum_starts_with_its_unspecified_value_and_prefixes_every_value() -> None:
    enums = [enum for file in _file_descriptors() for enum in _all_enums(file)]
    assert len(enums) >= 5
    problems = []
    for enum in enums:
        prefix = upper_snake(enum.name) + "_"
        zero = enum.values_by_number.get(0)
        if zero is None or zero.name != f"{prefix}UNSPECIFIED":
            problems.append(f"{enum.full_name}: zero value is {zero.name if zero else None}, not {prefix}UNSPECIFIED")
        problems.extend(
            f"{enum.full_name}.{value.name}: missing prefix {prefix}"
            for value in enum.values
            if not value.name.startswith(prefix)
        )
    assert not problems, "\n".join(problems)


def test_every_rpc_has_its_own_request_and_response() -> None:
    methods = _all_methods()
    assert len(methods) >= 20
    users: dict[str, list[str]] = {}
    for method in methods:
        rpc = f"{method.containing_service.name}.{method.name}"
        users.setdefault(method.input_type.full_name, []).append(f"{rpc} (request)")
        users.setdefault(method.output_type.full_name, []).append(f"{rpc} (response)")
        assert method.input_type.full_name.startswith("tripmesh.v1."), f"{rpc} takes a message from elsewhere"
        assert method.output_type.full_name.startswith("tripmesh.v1."), f"{rpc} returns a message from elsewhere"
    shared = {message: rpcs for message, rpcs in users.items() if len(rpcs) > 1}
    assert not shared, f"messages used by more than one RPC or role: {shared}"


RPC_LINE = re.compile(r"^\s*rpc\s+(\w+)\s*\(")


def rpc_comments(text: str) -> dict[str, str]:
    """Each RPC's leading comment: the `//` lines directly above its `rpc` line."""
    comments: dict[str, str] = {}
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = RPC_LINE.match(line)
        if not match:
            continue
        above: list[str] = []
        for previous in reversed(lines[:number]):
            stripped = previous.strip()
            if not stripped.startswith("//"):
                break
            above.insert(0, stripped.removeprefix("//").strip())
        comments[match.group(1)] = " ".join(above)
    return comments


def test_rpc_comments_are_found_by_the_parser() -> None:
    text = (
        "service S {\n  // Does it.\n  // Codes: OK.\n  rpc Do(DoRequest) returns (DoResponse);\n\n"
        "  rpc Bare(A) returns (B);\n}"
    )
    assert rpc_comments(text) == {"Do": "Does it. Codes: OK.", "Bare": ""}


def test_every_rpc_comment_lists_its_codes() -> None:
    missing = []
    found: set[tuple[str, str]] = set()
    for proto in PROTO_FILES:
        for rpc, comment in rpc_comments(proto.read_text()).items():
            found.add((proto.stem, rpc))
            if "Codes:" not in comment:
                missing.append(f"{proto.name}: rpc {rpc}")
    declared = {(m.containing_service.file.name.split("/")[-1].removesuffix(".proto"), m.name) for m in _all_methods()}
    assert found == declared, "the .proto parser and the descriptors disagree on the RPCs"
    assert not missing, f"RPC comments without 'Codes:': {missing}"


def _buf() -> str:
    for candidate in (Path(sys.executable).parent / "buf", Path(shutil.which("buf") or "")):
        if candidate.name and candidate.is_file():
            return str(candidate)
    pytest.fail("buf not found: it comes with the dev extra (buf-bin); run `make venv`")


def test_buf_lint_passes() -> None:
    result = subprocess.run([_buf(), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"buf lint:\n{result.stdout}{result.stderr}"


# --- pip install . ------------------------------------------------------------------------------------

SOURCES = ("pyproject.toml", "setup.py", "README.md", "protos", "services", "coordinator")

CHECK_INSTALLED = textwrap.dedent(
    """
    import importlib, pathlib, sys
    site = pathlib.Path(sys.argv[1]).resolve()
    assert not any("__editable__" in type(f).__module__ for f in sys.meta_path), sys.meta_path
    names = sys.argv[2:]
    for name in names:
        module = importlib.import_module(name)
        where = pathlib.Path(module.__file__).resolve()
        assert site in where.parents, f"{name} imported from {where}, not from {site}"
    from tripmesh.v1 import flight_service_pb2, trip_coordinator_pb2_grpc
    assert flight_service_pb2.DESCRIPTOR.services_by_name["FlightService"].methods_by_name["Reserve"]
    assert trip_coordinator_pb2_grpc.TripCoordinatorStub
    print("ok", len(names))
    """
)


def _copy_sources(destination: Path) -> None:
    destination.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, destination / name)


@pytest.mark.slow
def test_pip_install_ships_the_generated_stubs(tmp_path: Path) -> None:
    """`pip install .` from a tree with no stubs; then import everything from the installed copy only.

    Fast (a few seconds): --no-build-isolation reuses this venv's grpcio-tools and mypy-protobuf for
    the build, --no-deps and --no-index install nothing from an index, and the check runs under
    `python -S` with only the install target and this venv's site-packages (for grpcio & co.) on
    sys.path, so neither the editable install nor the source tree can answer an import.
    """
    source, target = tmp_path / "src", tmp_path / "site"
    _copy_sources(source)
    assert not list((source / "protos" / "tripmesh" / "v1").glob("*_pb2*")), "the copy must start without stubs"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    shipped = target / "tripmesh" / "v1"
    for proto in PROTO_FILES:
        for suffix in (*STUB_SUFFIXES, ".proto"):
            path = shipped / (proto.stem + suffix)
            assert path.is_file(), f"{path.name} is not in the installed package"
    assert (target / "tripmesh" / "py.typed").is_file()
    for package in ("services/flight", "services/hotel", "services/payment", "services/notify", "coordinator"):
        versions = Path(package, "migrations", "versions")
        wanted = sorted(p.name for p in (REPO / versions).glob("*.py"))
        assert wanted[:1] == ["0001_initial.py"], wanted
        assert sorted(p.name for p in (target / versions).glob("*.py")) == wanted, f"{versions} is not installed"

    modules = [f"tripmesh.v1.{p.stem}{s}" for p in PROTO_FILES for s in ("_pb2", "_pb2_grpc")]
    modules += ["services.kit.healthcheck", "coordinator.cli", "coordinator.launcher"]
    paths = sysconfig.get_paths()
    site_packages = dict.fromkeys([paths["purelib"], paths["platlib"]])
    check = subprocess.run(
        [sys.executable, "-S", "-P", "-c", CHECK_INSTALLED, str(target), *modules],
        env={"PYTHONPATH": ":".join([str(target), *site_packages]), "PATH": "/usr/bin:/bin"},
        cwd=target,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == f"ok {len(modules)}"
