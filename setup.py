"""The C speed-ups of oversipd.sip; everything else is in setup.cfg.

The extension is optional: where it cannot be built (no compiler, no Python
headers) oversipd installs without it and parses SIP in pure Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("oversipd.sip.syntax._speedups", ["oversipd/sip/syntax/_speedups.c"],
                             optional=True)])
