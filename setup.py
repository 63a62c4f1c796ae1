"""The compiled parts of oversipd.sip; everything else is in setup.cfg.

Both are optional: where they cannot be built (no compiler, no Python
headers, no Cython) oversipd installs without them and parses SIP in pure
Python.  `_speedups` is C that cuts header lines; `uri` and `message` are
the syntax layer's own Python files compiled by Cython 3 as they are
(annotations not taken as C types: the code's behaviour is the Python one).
"""

from setuptools import Extension, setup

SYNTAX = "oversipd/sip/syntax"
extensions = [Extension("oversipd.sip.syntax._speedups", [f"{SYNTAX}/_speedups.c"], optional=True)]
try:
    from Cython.Build import cythonize
except ImportError:
    pass
else:
    extensions += cythonize(
        [Extension(f"oversipd.sip.syntax.{name}", [f"{SYNTAX}/{name}.py"], optional=True)
         for name in ("uri", "message")],
        compiler_directives={"language_level": 3, "annotation_typing": False}, quiet=True)

setup(ext_modules=extensions)
