# Type stubs of the native driver (fastopt/_kernels.pyx); fastopt/_purepython.py mirrors it.
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

RULE_SGD: int
RULE_ADAM: int
RULE_PROBE: int
RULE_RMSPROP: int
RULE_ADAGRAD: int
RULE_LION: int
RULE_ADAMAX: int
RULE_RADAM: int
RULE_EMA: int
RULE_NADAM: int
NARGS: dict[int, int]
MAX_STREAMS: int
OK: int
NEEDS_STATE: int

def openmp_enabled() -> bool: ...
def openmp_version() -> int: ...
def omp_max_threads() -> int: ...
def isa_compiled() -> tuple[str, ...]: ...
def isa_supported(name: str) -> bool: ...
def isa_select(name: str) -> None: ...
def isa_active() -> str: ...
def address(a: np.ndarray) -> int: ...
def grad_norm(arrays: list[np.ndarray], norm_type: float, nthreads: int) -> float: ...
def set_parallel_grain(elems: int) -> int: ...
def get_parallel_grain() -> int: ...
def active_steps() -> int: ...

class Plan:
    rule: int
    ntensors: int
    def __init__(
        self, rule: int, streams: list[Sequence[np.ndarray | None]], groups: Sequence[int]
    ) -> None: ...
    def check(self, grads: Sequence[np.ndarray | None]) -> int: ...
    def step(
        self,
        grads: Sequence[np.ndarray | None],
        args: npt.NDArray[np.float64],
        steps: npt.NDArray[np.int64],
        increment: bool,
        nthreads: int,
        aux: npt.NDArray[np.float64] | None = None,
    ) -> int: ...
