"""Crash-safe optimizer checkpoints in NumPy's npz format, with no pickled objects.

``save(optimizer, path)`` writes the optimizer's ``state_dict()`` atomically: to a temporary
file in the same directory, flushed and fsync'ed, then renamed over ``path`` (and the directory
fsync'ed), so a crash at any moment leaves either the previous checkpoint or the new one, never
a torn file. ``load(optimizer, path)`` reads it with ``allow_pickle=False``, refuses a
checkpoint made for another model (other optimizer class, param count, shapes or dtypes) with a
ValueError, and loads it through ``load_state_dict`` (which changes nothing unless everything
fits).

Layout: one npz archive; ``__meta__`` holds JSON (format version, optimizer class, each param's
shape and dtype, the param groups' hyperparameters, each state's keys and step); each state
array is stored as ``state/<index>/<key>``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from .optimizer import Optimizer

FORMAT = "fastopt-checkpoint"
VERSION = 1


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return {"__tuple__": [_jsonable(v, where) for v in value]}
    raise TypeError(f"save: {where} = {value!r} cannot be stored without pickling "
                    "(only numbers, strings, booleans, None and tuples of them)")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(_from_json(v) for v in value["__tuple__"])
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(optimizer: Optimizer, path: str | os.PathLike) -> None:
    """Write ``optimizer``'s state to ``path`` (npz, no pickles), atomically."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"save: expected a fastopt optimizer, got {type(optimizer).__name__}")
    sd = optimizer.state_dict()
    arrays: dict[str, np.ndarray] = {}
    state_meta = {}
    for i, st in sd["state"].items():
        state_meta[str(i)] = {"step": st.get("step"),
                              "keys": sorted(k for k in st if k != "step")}
        for k, a in st.items():
            if k != "step":
                arrays[f"state/{i}/{k}"] = a
    groups = []
    for gi, g in enumerate(sd["param_groups"]):
        groups.append({k: (v if k == "params" else _jsonable(v, f"param_groups[{gi}][{k!r}]"))
                       for k, v in g.items()})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": type(optimizer).__name__,
        "params": [{"shape": list(p.shape), "dtype": p.dtype.str} for p in optimizer._params],
        "param_groups": groups,
        "state": state_meta,
    }
    arrays["__meta__"] = np.array(json.dumps(meta))
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastopt-", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):        # make the rename itself durable (POSIX)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load(optimizer: Optimizer, path: str | os.PathLike) -> None:
    """Load a checkpoint written by ``save`` into ``optimizer`` (of the same params)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"load: expected a fastopt optimizer, got {type(optimizer).__name__}")
    with np.load(os.fspath(path), allow_pickle=False) as npz:
        if "__meta__" not in npz.files:
            raise ValueError(f"load: {path} is not a fastopt checkpoint (no __meta__)")
        meta = json.loads(str(npz["__meta__"]))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"load: {path} is not a version-{VERSION} fastopt checkpoint")
        if meta["optimizer"] != type(optimizer).__name__:
            raise ValueError(f"load: the checkpoint is for {meta['optimizer']}, not "
                             f"{type(optimizer).__name__}")
        ours = [{"shape": list(p.shape), "dtype": p.dtype.str} for p in optimizer._params]
        if meta["params"] != ours:
            if len(meta["params"]) != len(ours):
                raise ValueError(f"load: the checkpoint is for a different model: it has "
                                 f"{len(meta['params'])} params, the optimizer has {len(ours)}")
            i = next(k for k, (a, b) in enumerate(zip(meta["params"], ours)) if a != b)
            raise ValueError(f"load: the checkpoint is for a different model: its param {i} is "
                             f"{meta['params'][i]}, the optimizer's is {ours[i]}")
        state: dict[int, dict[str, Any]] = {}
        for key, st in meta["state"].items():
            entry: dict[str, Any] = {k: npz[f"state/{key}/{k}"] for k in st["keys"]}
            if st["step"] is not None:
                entry["step"] = st["step"]
            state[int(key)] = entry
    groups = [{k: (v if k == "params" else _from_json(v)) for k, v in g.items()}
              for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
