"""Crash-safe optimizer checkpoints in NumPy's npz format, with no pickled objects.

``save(optimizer, path)`` writes the optimizer's ``state_dict()`` atomically: to a temporary
file in the same directory, flushed and fsync'ed, then renamed over ``path`` (and the directory
fsync'ed), so a crash at any moment leaves either the previous checkpoint or the new one, never
a torn file. ``load(optimizer, path)`` reads the whole file and checks it (the zip structure,
each member's CRC-32, the metadata; nothing is ever unpickled), refuses a truncated or corrupted
file, or a checkpoint made for another model (other optimizer class, param count, shapes or
dtypes), with a ValueError naming the file, and loads it through ``load_state_dict`` (which
changes nothing unless everything fits).

Layout: one npz archive; ``__meta__`` holds JSON (format version, optimizer class, each param's
shape and dtype, the param groups' hyperparameters, each state's keys and step); each state
array is stored as ``state/<index>/<key>``.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from . import _validation
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
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"__dtype__": np.dtype(value).name}       # state_dtype
    raise TypeError(f"save: {where} = {value!r} cannot be stored without pickling "
                    "(only numbers, strings, booleans, None and tuples of them)")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("__tuple__"), list):
        return tuple(_from_json(v) for v in value["__tuple__"])
    if isinstance(value, dict) and set(value) == {"__dtype__"} \
            and value["__dtype__"] in ("float32", "bfloat16"):
        return _dtype_named(value["__dtype__"])
    return value


def _dtype_named(name: str) -> np.dtype:
    if name == "bfloat16":
        bf16 = _validation.bfloat16(load=True)
        if bf16 is None:
            raise ValueError("load: the checkpoint holds bfloat16 values, which need ml_dtypes "
                             "(pip install 'fastopt[bf16]')")
        return bf16
    return np.dtype(name)


def _dtype_str(d: np.dtype) -> str:
    """A dtype in the metadata: NumPy's string, or "bfloat16" (whose NumPy string is only
    '<V2')."""
    return "bfloat16" if _validation.is16(d) and d.kind == "V" else d.str


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
        bf16 = []
        for k, a in st.items():
            if k != "step":
                if isinstance(a, np.ndarray) and _dtype_str(a.dtype) == "bfloat16":
                    a = a.view(np.uint16)           # NumPy's npy format has no bfloat16
                    bf16.append(k)
                arrays[f"state/{i}/{k}"] = a
        if bf16:
            state_meta[str(i)]["bfloat16"] = sorted(bf16)
    groups = []
    for gi, g in enumerate(sd["param_groups"]):
        groups.append({k: (v if k == "params" else _jsonable(v, f"param_groups[{gi}][{k!r}]"))
                       for k, v in g.items()})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": type(optimizer).__name__,
        "params": [{"shape": list(p.shape), "dtype": _dtype_str(p.dtype)}
                   for p in optimizer._live_params()],
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


# What zipfile and NumPy's npy header reader raise on damaged data. Other errors are kept out
# before reading: only uncompressed, unencrypted members whose offset lies inside the file are
# read (which is what save writes), so no decompressor runs and no seek goes out of the file.
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError)


def load(optimizer: Optimizer, path: str | os.PathLike) -> None:
    """Load a checkpoint written by ``save`` into ``optimizer`` (of the same params).

    The whole file is read and checked first (the zip structure, every member's CRC-32, the
    metadata), then handed to ``load_state_dict`` in one call: a truncated or corrupted file, or
    one made for another model, raises ValueError naming the file, and the optimizer is left as
    it was. A missing or unreadable file raises the usual OSError (FileNotFoundError, ...).
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"load: expected a fastopt optimizer, got {type(optimizer).__name__}")
    path = os.fspath(path)
    with open(path, "rb") as f:         # a missing file stays FileNotFoundError
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ValueError(f"load: {path} is empty, not a fastopt checkpoint")
        try:
            zf = zipfile.ZipFile(f)
        except _ZIP_ERRORS as e:
            raise ValueError(f"load: {path} is not a fastopt checkpoint, or it is truncated: "
                             f"no zip archive can be read from it ({e})") from e
        with zf:
            state_dict = _read(zf, path, size, optimizer)
    try:
        optimizer.load_state_dict(state_dict)
    except (TypeError, ValueError) as e:
        raise ValueError(f"load: {path} holds a state the optimizer refuses: {e}") from e


def _member(zf: zipfile.ZipFile, name: str, path: str, size: int) -> np.ndarray:
    """The array stored as ``name``, read whole (so that zipfile checks its CRC-32): a
    read-only array over the member's bytes."""
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise ValueError(f"load: {path} is corrupted: it lacks the array {name!r}, which its "
                         "__meta__ lists") from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        raise ValueError(f"load: {path} is corrupted: its member {name!r} is compressed or "
                         "encrypted (save writes neither)")
    if not 0 <= info.header_offset < size:
        raise ValueError(f"load: {path} is corrupted: its member {name!r} starts at byte "
                         f"{info.header_offset}, outside the file's {size} bytes")
    try:
        raw = zf.read(info)
        buf = io.BytesIO(raw)
        version = npy_format.read_magic(buf)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"npy format version {version} (save writes 1.0)")
        start = buf.tell()
        count = math.prod(shape)
        if min(shape, default=0) < 0 or count * dtype.itemsize != len(raw) - start:
            raise ValueError(f"its header says shape {shape} and dtype {dtype}, which do not "
                             f"fit the {len(raw) - start} bytes of data")
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=start)
        return array.reshape(shape, order="F" if fortran_order else "C")
    except _ZIP_ERRORS as e:
        why = str(e) or ("its data ends early" if isinstance(e, EOFError) else type(e).__name__)
        raise ValueError(f"load: {path} is corrupted: its member {name!r} cannot be read "
                         f"({why})") from e


def _read(zf: zipfile.ZipFile, path: str, size: int, optimizer: Optimizer) -> dict:
    """The state dict stored in the checkpoint, every part of it read and its layout checked."""
    def corrupted(what: str) -> ValueError:
        return ValueError(f"load: {path} is corrupted: its __meta__ {what}")

    if "__meta__.npy" not in zf.namelist():
        raise ValueError(f"load: {path} is not a fastopt checkpoint (no __meta__)")
    text = _member(zf, "__meta__", path, size)
    if text.dtype.kind != "U" or text.shape != ():
        raise corrupted(f"is not a string but an array of dtype {text.dtype} and shape "
                        f"{text.shape}")
    try:
        meta = json.loads(str(text[()]))
    except ValueError as e:
        raise corrupted(f"is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise corrupted(f"is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"load: {path} is not a version-{VERSION} fastopt checkpoint")
    for key, kind in (("optimizer", str), ("params", list), ("param_groups", list),
                      ("state", dict)):
        if key not in meta:
            raise corrupted(f"lacks {key!r}")
        if not isinstance(meta[key], kind):
            raise corrupted(f"has {key!r} = {_short(meta[key])}, expected a JSON "
                            f"{_JSON_NAMES[kind]}")
    if meta["optimizer"] != type(optimizer).__name__:
        raise ValueError(f"load: {path}: the checkpoint is for {meta['optimizer']}, not "
                         f"{type(optimizer).__name__}")
    for i, p in enumerate(meta["params"]):
        if not (isinstance(p, dict) and set(p) == {"shape", "dtype"}
                and isinstance(p["shape"], list) and all(_is_int(n) for n in p["shape"])
                and isinstance(p["dtype"], str)):
            raise corrupted(f"has params[{i}] = {_short(p)}, expected "
                            '{"shape": [ints], "dtype": string}')
    ours = [{"shape": list(p.shape), "dtype": _dtype_str(p.dtype)}
            for p in optimizer._live_params()]
    if meta["params"] != ours:
        if len(meta["params"]) != len(ours):
            raise ValueError(f"load: {path}: the checkpoint is for a different model: it has "
                             f"{len(meta['params'])} params, the optimizer has {len(ours)}")
        i = next(k for k, (a, b) in enumerate(zip(meta["params"], ours)) if a != b)
        raise ValueError(f"load: {path}: the checkpoint is for a different model: its param "
                         f"{i} is {meta['params'][i]}, the optimizer's is {ours[i]}")
    groups = []
    for gi, g in enumerate(meta["param_groups"]):
        if not (isinstance(g, dict) and isinstance(g.get("params"), list)
                and all(_is_int(n) for n in g["params"])):
            raise corrupted(f"has param_groups[{gi}] = {_short(g)}, expected an object with "
                            '"params": [ints]')
        groups.append({k: (v if k == "params" else _from_json(v)) for k, v in g.items()})
    state: dict[int, dict[str, Any]] = {}
    for key, st in meta["state"].items():
        if not key.isdecimal() or str(int(key)) != key:
            raise corrupted(f"has a state for {key!r}, not a param index")
        if not (isinstance(st, dict) and set(st) - {"bfloat16"} == {"step", "keys"}
                and isinstance(st["keys"], list) and all(isinstance(k, str) for k in st["keys"])
                and isinstance(st.get("bfloat16", []), list)
                and set(st.get("bfloat16", [])) <= set(st["keys"])):
            raise corrupted(f"has state[{key!r}] = {_short(st)}, expected "
                            '{"step": integer or null, "keys": [strings]}')
        entry: dict[str, Any] = {k: _member(zf, f"state/{key}/{k}", path, size)
                                 for k in st["keys"]}
        for k in st.get("bfloat16", []):
            if entry[k].dtype != np.uint16:
                raise corrupted(f"has state/{key}/{k} of dtype {entry[k].dtype}, which "
                                "should hold bfloat16 bits (uint16)")
            entry[k] = entry[k].view(_dtype_named("bfloat16"))
        if st["step"] is not None:
            entry["step"] = st["step"]
        state[int(key)] = entry
    return {"state": state, "param_groups": groups}


_JSON_NAMES = {str: "string", list: "array", dict: "object"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
