"""Build the compiled extensions: the audio core ``rtvoice._dsp`` and the media kernel
``rtvoice.twilio._fastmedia``.

The default build is portable (``-O3`` without ``-march=native``) so that wheels run on any x86-64/arm64 host.
Set ``RTVOICE_NATIVE=1`` to build for the host CPU only (a tuned host that builds from source).
"""

from __future__ import annotations

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
if os.environ.get("RTVOICE_NATIVE", "") == "1":
    compile_args.append("-march=native")
if sys.platform == "win32":
    compile_args = ["/O2"]

extensions = [
    Extension(
        "rtvoice._dsp",
        ["src/rtvoice/_dsp.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    # the per-frame Twilio media kernel (parse + base64 + μ-law in one call); no numpy
    Extension(
        "rtvoice.twilio._fastmedia",
        ["src/rtvoice/twilio/_fastmedia.pyx"],
        extra_compile_args=compile_args,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )
)
