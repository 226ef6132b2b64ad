"""Unpickling weights files without letting them run code.

``pickle.load`` calls whatever a file names (``os.system`` included). Weights files are
pickles too (PyTorch checkpoints, object ``.npy`` files), so every pickle this toolkit
reads goes through :class:`RestrictedUnpickler`: a global is resolved only when the
caller's allow-list names it, and what it resolves to is a harmless stand-in (a
placeholder, or a constructor that checks its arguments), never the real callable.

Numpy objects are rebuilt from plain bytes by :func:`resolve`, not by numpy's own
``__reduce__`` machinery:

* ``numpy.dtype`` -> :class:`DTypeSpec` (numeric type codes, plus ``O8`` for the object
  arrays of ``.npy`` files; byte order from the pickled state);
* ``numpy.core.multiarray.scalar`` -> a numpy scalar of a numeric dtype from its bytes
  (PyTorch checkpoints written with numpy integers in their metadata pickle these);
* ``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray`` -> :class:`PendingArray`,
  materialised by :func:`resolve` with ``np.frombuffer`` (numeric dtypes) or from the
  list of already-unpickled objects (object dtype);
* ``_codecs.encode(text, "latin1")`` -> bytes (how protocol-2 pickles spell ``bytes``).
"""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np


class UnsafePickleError(ValueError):
    """The pickle names something a weights file should not need, or is malformed."""


# Numeric type codes a weights file may use (``np.dtype(code)``), and "O8" for the
# object array a ``.npy`` of a pickled dict holds.
_NUMERIC_DTYPE = re.compile(r"^(?:[iu][1248]|f[248]|c(?:8|16)|b1|\?)$")
_OBJECT_DTYPE = "O8"
_MAX_ELEMENTS = 1 << 31  # sanity bound on a pickled array's shape


class DTypeSpec:
    """Stand-in for ``numpy.dtype(code, align, copy)``; BUILD sets its byte order."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(code, str) or not (_NUMERIC_DTYPE.match(code) or code == _OBJECT_DTYPE):
            raise UnsafePickleError(f"pickled numpy dtype {code!r} is not a plain numeric type")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")):
            raise UnsafePickleError(f"unexpected pickled dtype state {state!r}")
        if any(part is not None for part in state[2:5]):
            raise UnsafePickleError("structured or sub-array dtypes are not allowed in a weights file")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        if self.byteorder in ("<", ">") and dtype.itemsize > 1:
            dtype = dtype.newbyteorder(self.byteorder)
        return dtype

    @property
    def is_object(self) -> bool:
        return self.code == _OBJECT_DTYPE


def numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, bytes)`` for numeric dtypes only."""
    if not isinstance(dtype, DTypeSpec) or dtype.is_object:
        raise UnsafePickleError("a pickled numpy scalar must have a numeric dtype")
    np_dtype = dtype.to_numpy()
    if not isinstance(data, bytes) or len(data) != np_dtype.itemsize:
        raise UnsafePickleError(f"pickled numpy scalar of {np_dtype} has {len(data or b'')} bytes")
    return np.frombuffer(data, dtype=np_dtype, count=1)[0].copy()


def codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode``, which protocol-2 pickles use to spell bytes, for latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickleError("_codecs.encode is allowed for latin-1 text only")
    return text.encode("latin1")


class _NdarrayType:
    """Stand-in for the ``numpy.ndarray`` class argument of ``_reconstruct``."""


NDARRAY = _NdarrayType()


class PendingArray:
    """What ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` + BUILD leave:
    the pickled shape, dtype and data, checked and turned into an array by :func:`resolve`."""

    def __init__(self) -> None:
        self.state: Tuple | None = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def materialise(self) -> np.ndarray:
        state = self.state
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError("malformed pickled numpy array")
        _version, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and 0 <= d for d in shape)):
            raise UnsafePickleError(f"pickled numpy array has a bad shape {shape!r}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count > _MAX_ELEMENTS or not isinstance(dtype, DTypeSpec):
            raise UnsafePickleError("pickled numpy array too large or without a known dtype")
        order = "F" if fortran else "C"
        if dtype.is_object:
            if not isinstance(raw, list) or len(raw) != count:
                raise UnsafePickleError("malformed pickled object array")
            out = np.empty(count, dtype=object)
            for i, item in enumerate(raw):
                out[i] = resolve(item)
            return out.reshape(shape, order=order)
        if isinstance(raw, str):  # written by Python 2, read with encoding="latin1"
            raw = raw.encode("latin1")
        np_dtype = dtype.to_numpy()
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != count * np_dtype.itemsize:
            raise UnsafePickleError(f"pickled numpy array of shape {shape} has the wrong number "
                                    "of bytes")
        flat = np.frombuffer(bytes(raw), dtype=np_dtype, count=count)
        return np.array(flat.reshape(shape, order=order), dtype=np_dtype.newbyteorder("="))


def ndarray_reconstruct(cls: Any, shape: Any = (0,), code: Any = b"b") -> PendingArray:
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays only."""
    if cls is not NDARRAY:
        raise UnsafePickleError("_reconstruct is allowed for numpy.ndarray only")
    return PendingArray()


#: The numpy globals a weights pickle may name, under numpy 1's and numpy 2's module names.
NUMPY_SCALARS: Dict[Tuple[str, str], Any] = {
    ("numpy", "dtype"): DTypeSpec,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
    ("_codecs", "encode"): codecs_encode,
}
NUMPY_ARRAYS: Dict[Tuple[str, str], Any] = {
    ("numpy", "dtype"): DTypeSpec,
    ("numpy", "ndarray"): NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): ndarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): ndarray_reconstruct,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``allowed``
    (``{(module, name): stand-in}``); anything else is an :class:`UnsafePickleError`
    naming it. ``persistent_load`` (optional) handles persistent ids."""

    def __init__(self, file, allowed: Mapping[Tuple[str, str], Any],
                 persistent_load: Callable[[Any], Any] | None = None, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self._allowed = dict(allowed)
        self._persistent = persistent_load

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refers to {module}.{name}, which a weights file should "
                                    "not need (refused: unpickling it could run code)") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        return self._persistent(pid)


def restricted_loads(data: bytes, allowed: Mapping[Tuple[str, str], Any] = (), **kwargs) -> Any:
    """Unpickle ``data`` allowing only ``allowed`` globals (none by default: plain data)."""
    return RestrictedUnpickler(io.BytesIO(data), dict(allowed), **kwargs).load()


def resolve(obj: Any, leaf: Callable[[Any], Any] | None = None) -> Any:
    """Replace placeholders (:class:`PendingArray`, and whatever ``leaf`` handles) inside
    dicts, lists and tuples by the arrays they stand for."""
    if leaf is not None:
        done = leaf(obj)
        if done is not obj:
            return done
    if isinstance(obj, PendingArray):
        return obj.materialise()
    if isinstance(obj, DTypeSpec):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return type(obj)((k, resolve(v, leaf)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(resolve(v, leaf) for v in obj)
    return obj


def load_object_npy(path: str | os.PathLike) -> Any:
    """The object stored in a ``.npy`` file of dtype object (``np.save`` of a dict, as
    ``np.load(path, allow_pickle=True).item()`` would return it), through the restricted
    unpickler: only numpy arrays of numeric dtypes, dicts, lists and strings come out.
    Files written by Python 2 are read as numpy does with ``encoding="latin1"``."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as err:
            raise UnsafePickleError(f"not a .npy file ({err})") from None
        if dtype != np.dtype(object):
            raise UnsafePickleError(f"holds a plain {dtype} array, not a pickled object; "
                                    "read it with np.load(allow_pickle=False)")
        try:
            obj = RestrictedUnpickler(f, NUMPY_ARRAYS, encoding="latin1").load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                IndexError) as err:
            raise UnsafePickleError(f"truncated or corrupt pickle ({err})") from None
    array = resolve(obj)
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise UnsafePickleError("the pickle does not hold the array its header announces")
    return array.item() if array.shape == () else array
