"""The modules' namespace (alias `oversipd.M`).

Third-party distributions install `oversipd/modules/NAME.py`; the daemon
puts the drop-in directory on this package's path, so
`import oversipd.modules.NAME` finds both.
"""

from pkgutil import extend_path

# A distribution installed elsewhere on sys.path (an editable install, a
# different site directory) brings its own `oversipd/modules/` directory:
# add every one of them, as a namespace package would.
__path__ = extend_path(__path__, __name__)
