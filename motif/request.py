"""A command's typed request, made from argparse's Namespace in the command's `run` and nowhere else.

Each command module declares a frozen dataclass whose fields are its flags (argparse's `dest` names);
`run(args)` builds it with `from_namespace` and the work below takes the dataclass, so nothing under
the CLI reads a Namespace and a caller in code (the demo, a test) builds the request directly.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Request = TypeVar("Request", bound="DataclassInstance")


def from_namespace(cls: type[Request], args: argparse.Namespace) -> Request:
    """`cls` with each of its fields taken from `args` by name (a field argparse lacks keeps its default)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
