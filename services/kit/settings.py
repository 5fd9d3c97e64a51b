"""Configuration from the environment: TRIPMESH_<COMPONENT>_<SETTING>, with the documented defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_PORTS = {"coordinator": 50050, "flight": 50051, "hotel": 50052, "payment": 50053, "notify": 50054, "car": 50055}


def env(component: str, setting: str, default: str) -> str:
    return os.environ.get(f"TRIPMESH_{component.upper()}_{setting.upper()}", default)


def env_int(component: str, setting: str, default: int) -> int:
    return int(env(component, setting, str(default)))


def env_bool(component: str, setting: str, default: bool) -> bool:
    raw = env(component, setting, "on" if default else "off").strip().lower()
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"TRIPMESH_{component.upper()}_{setting.upper()} must be on or off, got {raw!r}")


def env_float(component: str, setting: str, default: float) -> float:
    return float(env(component, setting, str(default)))


def var_dir() -> str:
    return os.environ.get("TRIPMESH_VAR_DIR", "var")


def default_database_url(component: str) -> str:
    return f"sqlite+aiosqlite:///{var_dir()}/{component}.db"


@dataclass(frozen=True)
class ServiceSettings:
    component: str
    host: str
    port: int
    database_url: str
    log_format: str
    log_level: str
    grace_seconds: float

    @classmethod
    def from_env(cls, component: str) -> ServiceSettings:
        return cls(
            component=component,
            host=env(component, "host", os.environ.get("TRIPMESH_HOST", "127.0.0.1")),
            port=env_int(component, "port", DEFAULT_PORTS[component]),
            database_url=env(component, "database_url", default_database_url(component)),
            log_format=os.environ.get("TRIPMESH_LOG_FORMAT", "console"),
            log_level=os.environ.get("TRIPMESH_LOG_LEVEL", "info"),
            grace_seconds=env_float(component, "grace_seconds", 5.0),
        )
