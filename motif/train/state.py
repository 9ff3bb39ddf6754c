"""Nested state (optimizer state dicts, RNG states) as safetensors + JSON: no pickle anywhere.

`flatten` replaces every tensor in a nested dict/list structure by a reference into a flat
`{key: tensor}` map (saved with safetensors) and keeps the rest as a JSON skeleton; `unflatten`
inverts it. Only JSON scalars, lists, tuples and string- or int-keyed dicts are allowed around the
tensors, which covers torch and DeepSpeed optimizer state dicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def flatten(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {"__dict__": {k: walk(v) for k, v in x.items()}}
            if all(isinstance(k, int) for k in x):
                return {"__intdict__": [[k, walk(v)] for k, v in x.items()]}
            raise TypeError(f"cannot store a dict with keys of type {type(next(iter(x))).__name__}")
        if isinstance(x, tuple | torch.Size):
            return {"__tuple__": [walk(v) for v in x]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} without pickle")

    return tensors, walk(obj)


def unflatten(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__dict__" in x:
                return {k: walk(v) for k, v in x["__dict__"].items()}
            if "__intdict__" in x:
                return {int(k): walk(v) for k, v in x["__intdict__"]}
            if "__tuple__" in x:
                return tuple(walk(v) for v in x["__tuple__"])
        return x

    return walk(skeleton)


def save_state(obj: Any, path: str | Path) -> None:
    """Write `path`.safetensors and `path`.json."""
    path = Path(path)
    tensors, skeleton = flatten(obj)
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(skeleton))


def load_state(path: str | Path) -> Any:
    path = Path(path)
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return unflatten(tensors, json.loads(path.with_suffix(".json").read_text()))
