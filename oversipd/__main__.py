from .cli import console_main

# The same exit as the `oversipd` command: os._exit after the daemon's own
# cleanup.  A normal interpreter exit would first restore the default
# signal handlers, and a late SIGTERM would then kill a cleanly stopped master.
console_main()
