"""Which services exist in this build, in start order."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

ALL_SERVICES = ("location", "dispatch", "billing")


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def available_services() -> list[str]:
    return [s for s in ALL_SERVICES if _exists(f"polder.{s}.main")]


def service_module(name: str) -> ModuleType:
    if name not in available_services():
        raise SystemExit(f"unknown service {name!r}; available: {', '.join(available_services())}")
    return importlib.import_module(f"polder.{name}.main")
