"""Issue 18 — the house in layers: imports run only downward, and no module imports itself back.

Reads every module of oversipd/ (nothing is imported: the source is parsed),
draws an arrow per import, including names imported only for type hints,
and holds each arrow against the layer order below.  A new module must be
given its layer here: that is the point where its place in the house is
decided.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "oversipd"

# Lowest first.  A module may import its own layer and any layer below it.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["errors", "process", "logger", "altstack", "systemd", "control", "callbacks",
                    "forking", "modules"]),
    ("configuration", ["addresses", "settings", "sip.checks", "sip.settings", "sip.transport_settings",
                       "sip.proxy_settings", "sip.counters", "sip.registrar_settings",
                       "heartbeat", "pidfile", "privileges", "activation", "launcher", "kept"]),
    ("mechanisms", ["reexec", "listeners", "resources", "loader", "daemonize", "slots"]),
    ("sip store", ["sip.store", "sip.digest"]),
    ("sip syntax", ["sip.syntax"]),
    ("sip transaction", ["sip.transaction"]),
    ("sip transport", ["sip.transport"]),
    ("sip core", ["sip.core"]),
    ("sip proxy", ["sip.proxy"]),
    ("sip modules (OverSIP's core helpers)", ["sip.outbound_mangling", "sip.user_assertion"]),
    ("sip registrar", ["sip.registrar", "sip.auth"]),
    ("sip service", ["sip.service", "sip"]),
    ("public API", ["", "fingerprint", "generations"]),
    ("processes", ["worker", "master", "supervision", "watchdog", "reloading", "swap", "upgrade", "keeper"]),
    ("commands", ["cli", "control_commands", "user_commands", "scaffold", "testing", "__main__"]),
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def layer_of(name: str) -> int:
    """The index of the most specific LAYERS entry that names `name` or a package above it."""
    best, best_len = None, -1
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if (name == member or member == "" or name.startswith(member + ".")) and len(member) > best_len:
                best, best_len = index, len(member)
    assert best is not None and (best_len > 0 or name == ""), f"oversipd.{name} has no layer in LAYERS"
    return best


def inner_name(module: str) -> str | None:
    """"oversipd.sip.core" -> "sip.core", "oversipd" -> "", anything else -> None."""
    if module == "oversipd":
        return ""
    return module[len("oversipd."):] if module.startswith("oversipd.") else None


def submodule_or_module(inner: str | None, attribute: str, names: dict[str, Path]) -> str | None:
    """`from X import Y`: the submodule X.Y when there is one, else X itself."""
    if inner is None:
        return None
    submodule = f"{inner}.{attribute}" if inner else attribute
    return submodule if submodule in names else inner


def imports(name: str, path: Path, names: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [inner_name(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if name else []
                module = ".".join(["oversipd"] + base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [submodule_or_module(inner_name(module), alias.name, names) for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target is not None and target in names)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imports(name, path, names) for name, path in names.items()}


def test_every_module_has_a_layer():
    for name in module_names():
        layer_of(name)


def test_imports_only_run_downward():
    upward = [f"oversipd.{a or '(package)'} ({LAYERS[layer_of(a)][0]}) imports oversipd.{b or '(package)'} "
              f"({LAYERS[layer_of(b)][0]})"
              for a, targets in sorted(graph().items()) for b in sorted(targets)
              if layer_of(b) > layer_of(a)]
    assert upward == []


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_the_sip_stack_is_one_folder_per_layer():
    sip = PACKAGE / "sip"
    for layer in ("syntax", "transaction", "transport", "core", "proxy"):
        doc = ast.get_docstring(ast.parse((sip / layer / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"sip/{layer}/__init__.py must say what the layer may import"
