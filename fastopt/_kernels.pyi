# Type stubs of the native driver (fastopt/_kernels.pyx).
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_STREAMS: int
STREAM_P: int
STREAM_G: int
STREAM_M: int
DT_NONE: int
DT_F32: int
DT_F64: int
DT_F16: int
DT_BF16: int
RULES: dict[str, int]
ARG_NAMES: dict[str, tuple[str, ...]]
OK: int
SKIPPED: int
R_TYPE: int
R_DTYPE: int
R_SHAPE: int
R_LAYOUT: int
R_ALIGN: int
R_READONLY: int
R_OVERLAP: int
R_SIGNATURE: int
R_GROUP_SIZE: int
R_NEEDS_STATE: int
R_NULL: int

class ContractError(ValueError):
    reason: int
    tensor: int
    stream: int
    other: tuple[int, int] | None

def signatures() -> tuple[str, ...]: ...
def openmp_enabled() -> bool: ...
def openmp_version() -> int: ...
def omp_max_threads() -> int: ...
def isa_compiled() -> tuple[str, ...]: ...
def isa_supported(name: str) -> bool: ...
def isa_select(name: str) -> None: ...
def isa_active() -> str: ...
def address(a: np.ndarray) -> int: ...
def grad_norm(arrays: list[np.ndarray], norm_type: float, nthreads: int) -> float: ...
def same_objects(a: tuple, b: tuple | None) -> bool: ...
def set_parallel_grain(elems: int) -> int: ...
def get_parallel_grain() -> int: ...
def threads_in_use() -> int: ...
def peak_threads(reset: bool = False) -> int: ...

class Frame:
    ntensors: int
    reason: int
    bad_tensor: int
    bad_stream: int
    def release(self) -> None: ...
    def fill_numpy_lists(self, streams: list[Any], n: int) -> int: ...
    def fill_optimizer(self, groups: list[dict], sizes: list[int], grads: Any,
                       state: dict, slots_by_group: list[tuple], step_views: list[Any]) -> int: ...
    def fill_raw(self, addr: npt.NDArray[np.uint64], dtypes: npt.NDArray[np.uint8],
                 counts: npt.NDArray[np.int64], owners: list[Any]) -> int: ...

class Memo:
    def invalidate(self) -> None: ...

def run(f: Frame, rule: int, group: npt.NDArray[np.int32], args: npt.NDArray[np.float64],
        gscale: npt.NDArray[np.float64], steps: npt.NDArray[np.int64], increment: bool,
        nthreads: int, aux: npt.NDArray[np.float64] | None = None,
        max_norms: npt.NDArray[np.float64] | None = None, check_finite: bool = False,
        norms: npt.NDArray[np.float64] | None = None, memo: Memo | None = None,
        release: bool = True) -> int: ...

# the torch adapter's fast fill
def set_dlpack_api(capsule: Any) -> bool: ...

class TorchHold:
    active: int
    def commit(self, aux: npt.NDArray[np.float64] | None = None) -> None: ...
    def discard(self) -> None: ...
    def active_groups(self, group_of: npt.NDArray[np.int32], ngroups: int) -> list[bool]: ...

def fill_torch(f: Frame, groups: list[list[Any]], slots_by_group: list[tuple], state: Any,
               step_key: str | None, aux_key: str | None, types: tuple, dtypes: tuple,
               id_hash: bool, is_neg: Any, group_of: npt.NDArray[np.int32],
               steps: npt.NDArray[np.int64], aux: npt.NDArray[np.float64] | None,
               hold: TorchHold) -> int: ...
