"""An alternate signal stack that nested signals cannot overflow (issue 14).

CPython installs every Python-level signal handler with SA_ONSTACK, so once
faulthandler.enable() has registered its alternate stack, the C handler of
every signal runs there.  That stack is small: SIGSTKSZ + AT_MINSIGSTKSZ
(16,880 bytes where AVX-512 makes a signal frame about 3 KiB).  Signals that
arrive together are delivered nested, one frame on top of the other: from
the fifth on, the frames run past the bottom of the stack and overwrite the
heap block below it, silently.  The master handles twelve signals, and a
burst of them (a stop while TTIN, USR1 and SIGCHLD arrive) corrupted a code
object there, which the next forked worker then ran: SIGSEGV.
docs/RELIABILITY.md tells the story; tests/soak/altstack_overflow.py
reproduces it without oversipd.

install() replaces faulthandler's stack (which it keeps, unused) with an
mmap'd one, sized for every standard signal nested at once plus
faulthandler's own dump, above an inaccessible guard page: an overflow, if
one ever happened, would fault at once instead of corrupting memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

NESTED_SIGNALS = 32        # every standard signal at once, each blocked only while its own handler runs
FRAME_ALLOWANCE = 4096     # bytes per nested handler besides the kernel's signal frame
HANDLER_ALLOWANCE = 65536  # faulthandler's dump of every thread's stack runs on it too
AT_MINSIGSTKSZ = 51        # getauxval(3): the kernel's signal frame size on this CPU
FALLBACK_FRAME = 16384     # when the kernel does not say (before Linux 5.14)


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_mapping: mmap.mmap | None = None  # kept for the life of the process (and its forks)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def stack_size(libc: ctypes.CDLL) -> int:
    """Bytes enough for NESTED_SIGNALS frames of this CPU's size, and a fault dump."""
    frame = 0
    getauxval = getattr(libc, "getauxval", None)
    if getauxval is not None:
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        frame = getauxval(AT_MINSIGSTKSZ)
    frame = frame or FALLBACK_FRAME
    size = NESTED_SIGNALS * (frame + FRAME_ALLOWANCE) + HANDLER_ALLOWANCE
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def install() -> None:
    """Give this thread's signal handlers the large, guarded alternate stack (once per process).

    Call it after faulthandler.enable(), which would otherwise install its own.
    Raises OSError when the platform refuses.
    """
    global _mapping
    if _mapping is not None:
        return
    libc = _libc()
    size = stack_size(libc)
    mapping = mmap.mmap(-1, mmap.PAGESIZE + size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(base, mmap.PAGESIZE, 0) != 0:  # PROT_NONE: the guard page below the stack
        raise OSError(ctypes.get_errno(), "mprotect")
    stack = _StackT(base + mmap.PAGESIZE, 0, size)
    if libc.sigaltstack(ctypes.byref(stack), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaltstack")
    _mapping = mapping
