"""fastopt: fused, multithreaded, SIMD optimizer kernels with torch.optim's interface.

>>> import numpy as np, fastopt
>>> w = np.zeros(10, np.float32)
>>> opt = fastopt.Adam([w], lr=1e-3)
>>> opt.step([np.ones(10, np.float32)])
True
"""
from . import kernels, reference, schedules
from ._config import _select_isa_from_env, config, set_isa, show_config
from ._threading import get_num_threads, set_num_threads, set_straggler_fallback
from ._version import __version__
from .adadelta import Adadelta, Rprop
from .adafactor import Adafactor
from .adam import Adam, Adamax, AdamW, NAdam, RAdam
from .amp import LossScaler
from .asgd import ASGD
from .averaging import EMA, GradientAccumulator
from .checkpoint import load, save
from .clip import clip_grad_norm_, clip_grad_value_, grad_norm
from .lamb import LAMB
from .lion import Lion
from .optimizer import Optimizer
from .rmsprop import Adagrad, RMSprop
from .sgd import SGD
from .sparse_adam import SparseAdam

_select_isa_from_env()

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "EMA",
    "GradientAccumulator",
    "LAMB",
    "Lion",
    "LossScaler",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
    "__version__",
    "clip_grad_norm_",
    "clip_grad_value_",
    "config",
    "get_num_threads",
    "grad_norm",
    "kernels",
    "load",
    "reference",
    "save",
    "schedules",
    "set_isa",
    "set_num_threads",
    "set_straggler_fallback",
    "show_config",
]
