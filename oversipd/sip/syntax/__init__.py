"""Layer 1 of the SIP stack, syntax (RFC 3261 §7, §19, §20, §25): messages, URIs, framing.

Sans-I/O: bytes in, parsed objects out, and back to bytes; no sockets, no
asyncio, no clock.  `message` (requests and responses), `uri` (SIP/SIPS/tel
URIs, name-addr, Via), `framing` (Content-Length framing of a stream, CRLF
keep-alives), `errors` (ParseError, FramingError) and the optional C helper
`_speedups` that only cuts header lines (pure-Python fallback in `message`).

`uri` and `message` are compiled by Cython (issue 21: setup.py, when Cython
is there at build time) from these very files, into extension modules of the
same names next to them.  The Python source is still what runs when
OVERSIPD_SIP_PURE_PYTHON is set (the tests run it so), where nothing was
compiled, and where a source is newer than its compiled module (an edit not
built yet must not be shadowed by the old code).

May import: the standard library only.
"""

import importlib.machinery
import importlib.util
import os
import sys

COMPILED = ("uri", "message")
_HERE = os.path.dirname(os.path.abspath(__file__))


class _SourceUnlessCompiled:
    """Finds `uri` and `message` as Python source when their compiled module must not be used."""

    names = {f"{__name__}.{name}": name for name in COMPILED}

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> object:
        name = cls.names.get(fullname)
        if name is None:
            return None
        source = os.path.join(_HERE, name + ".py")
        compiled = _compiled_file(name)
        if compiled is not None and not os.environ.get("OVERSIPD_SIP_PURE_PYTHON") \
                and os.path.getmtime(compiled) >= os.path.getmtime(source):
            return None   # the path finder takes the extension module
        return importlib.util.spec_from_file_location(fullname, source)


def _compiled_file(name: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = os.path.join(_HERE, name + suffix)
        if os.path.exists(candidate):
            return candidate
    return None


def compiled(module: object) -> bool:
    """Whether `module` (uri or message) runs compiled."""
    return not getattr(module, "__file__", "").endswith(".py")


if _SourceUnlessCompiled not in sys.meta_path:
    sys.meta_path.insert(0, _SourceUnlessCompiled)
