"""The modules' namespace (alias `oversipd.M`).

Third-party distributions install `oversipd/modules/NAME.py`; the daemon
puts the drop-in directory on this package's path, so
`import oversipd.modules.NAME` finds both.
"""
