"""Build hook: generate the tripmesh.v1 stubs before packaging (see protos/generate.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithStubs(build_py):
    def run(self) -> None:
        spec = importlib.util.spec_from_file_location("tripmesh_generate", HERE / "protos" / "generate.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.generate()
        super().run()


setup(
    packages=[
        *find_packages(include=["services", "services.*", "coordinator", "coordinator.*"]),
        "tripmesh",
        "tripmesh.v1",
    ],
    package_dir={"tripmesh": "protos/tripmesh"},
    package_data={
        "tripmesh": ["py.typed"],
        "tripmesh.v1": ["*.proto", "*.pyi"],
        # Alembic revisions are files, not packages: each database kind's migrations/versions/*.py.
        "services.flight": ["*.json", "migrations/versions/*.py"],
        "services.hotel": ["*.json", "migrations/versions/*.py"],
        "services.payment": ["migrations/versions/*.py"],
        "services.notify": ["migrations/versions/*.py"],
        "services.car": ["migrations/versions/*.py"],
        "coordinator": ["migrations/versions/*.py"],
    },
    cmdclass={"build_py": BuildWithStubs},
)
