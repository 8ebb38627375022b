"""Build description of fastopt's extension; all metadata lives in pyproject.toml.

Flags: -O3, -fno-math-errno (lets sqrt vectorise) and -ffp-contract=off (no FMA contraction, so
every SIMD path rounds exactly like the baseline). Never -ffast-math, never -march=native: the
wheel must run on any CPU of its platform; faster instruction sets are chosen at run time.

OpenMP is used when the compiler accepts it (probed below); FASTOPT_OPENMP=0 disables it,
FASTOPT_OPENMP=1 makes its absence an error. The build prints what it chose.

FASTOPT_PUREPYTHON=1 builds no extension at all (for platforms without a working C compiler):
the installed package then runs fastopt.reference behind the same API (see fastopt/_backend.py).
FASTOPT_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer (tools/sanitize.sh).
"""
import os
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -fvisibility=hidden: the C files call each other directly, not through the PLT (only the
# module's init function, marked by Python's headers, is exported)
UNIX_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fno-strict-aliasing",
              "-fvisibility=hidden"]
MSVC_FLAGS = ["/O2", "/fp:precise"]


def _openmp_flags(compiler):
    """(compile flags, link flags) for OpenMP if the compiler accepts a test program, else None."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    flags = ["-fopenmp"]
    src = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=flags)
        except Exception:  # any compiler or linker failure means: no OpenMP
            return None
    return flags, flags


class BuildExt(build_ext):
    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        base = MSVC_FLAGS if msvc else UNIX_FLAGS
        wanted = os.environ.get("FASTOPT_OPENMP", "auto").strip().lower()
        omp = None if wanted in ("0", "no", "off", "false") else _openmp_flags(self.compiler)
        if omp is None and wanted in ("1", "yes", "on", "true"):
            sys.exit("fastopt: FASTOPT_OPENMP=1 but the compiler does not support OpenMP")
        if omp is None:
            print("fastopt: building WITHOUT OpenMP: kernels will run on one thread "
                  f"(FASTOPT_OPENMP={wanted})")
        else:
            print(f"fastopt: building with OpenMP ({' '.join(omp[0])})")
        sanitize = os.environ.get("FASTOPT_SANITIZE", "") == "1" and not msvc
        for ext in self.extensions:
            ext.extra_compile_args = list(base) + (omp[0] if omp else [])
            ext.extra_link_args = list(omp[1]) if omp else []
            if sanitize:
                san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
                ext.extra_compile_args += san
                ext.extra_link_args += san
        super().build_extensions()


extensions = [
    Extension(
        "fastopt._kernels",
        sources=["fastopt/_kernels.pyx", "csrc/dispatch.c", "csrc/storage.c",
                 "csrc/rules2.c"],
        include_dirs=["csrc", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")],
        depends=["csrc/fastopt.h", "csrc/kernels_body.h", "csrc/fo_omp.h", "csrc/fo_half.h",
                 "csrc/fo_dlpack.h", "csrc/fo_rules2.h", "csrc/rules2_body.h"],
    )
]

if os.environ.get("FASTOPT_PUREPYTHON", "").strip() == "1":
    print("fastopt: FASTOPT_PUREPYTHON=1: building without the native extension (NumPy fallback)")
    setup()
else:
    setup(
        ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}),
        cmdclass={"build_ext": BuildExt},
    )
