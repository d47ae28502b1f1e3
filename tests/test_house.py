"""The shape of the house: modules of one job (about 600 lines at most), no import cycle among
the modules' top-level imports, and no private name (`_x`) imported from another module
(shared internals live in named internal modules, such as `kmethods._checks`, whose own names
are public)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("kmethods", "seqmodels", "experiments")
MAX_LINES = 650


def _modules():
    """{dotted module name: parsed tree} of every module of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = (path, ast.parse(path.read_text()))
    return out


MODULES = _modules()


def _imports(tree, *, top_level_only):
    """(module, name) for each `from module import name` (name None for `import module`)."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def test_no_module_is_long():
    long = {
        name: n
        for name, (path, _) in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for name, (_, tree) in MODULES.items():
        for module, imported in _imports(tree, top_level_only=False):
            if imported is None or not imported.startswith("_") or imported.startswith("__"):
                continue
            if f"{module}.{imported}" in MODULES:
                continue  # an internal module itself, e.g. `from kmethods import _checks`
            crossing.append(f"{name}: from {module} import {imported}")
    assert not crossing, crossing


def test_no_import_cycle():
    graph = {
        name: {m for m, _ in _imports(tree, top_level_only=True) if m in MODULES and m != name}
        for name, (_, tree) in MODULES.items()
    }
    # `from package import submodule` imports the submodule too
    for name, (_, tree) in MODULES.items():
        for module, imported in _imports(tree, top_level_only=True):
            if imported and f"{module}.{imported}" in MODULES:
                graph[name].add(f"{module}.{imported}")
    # a package's __init__ importing its own submodules is how packages are built; a cycle is
    # a module that (through others) imports itself, not counting a package's own parents
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue  # a submodule importing its parent package's __init__
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


# Parameters that hold arrays, by the names the packages give them.
ARRAY_PARAMETERS = frozenset(
    "x y z v w u h a b xs x_t h0 init weights noise inputs points sample scores".split()
)


def _public_callables():
    """(qualified name, function) of every public function of the packages' top levels and
    their namespaces, and of the `__call__` and `step` of every public class."""
    import importlib
    import inspect

    seen, out = set(), []
    for package in ("kmethods", "seqmodels"):
        namespaces = [importlib.import_module(package)]
        for name in namespaces[0].__all__:
            obj = getattr(namespaces[0], name)
            if inspect.ismodule(obj):
                namespaces.append(obj)
        for namespace in namespaces:
            for name in namespace.__all__:
                obj = getattr(namespace, name)
                found = [(name, obj)] if inspect.isfunction(obj) else []
                if inspect.isclass(obj):
                    for method in ("__call__", "step"):
                        if inspect.isfunction(obj.__dict__.get(method)):
                            found.append((f"{name}.{method}", obj.__dict__[method]))
                for qualified, fn in found:
                    if fn not in seen:
                        seen.add(fn)
                        out.append((f"{namespace.__name__}.{qualified}", fn))
    return out


def test_public_signatures_annotate_their_arrays():
    """Every array parameter of a public function, and of a public class's `__call__` and
    `step`, carries an annotation (jaxtyping shapes such as Float[Array, "n d"])."""
    import inspect

    callables = _public_callables()
    assert len(callables) > 100
    bare = [
        f"{qualified}({p.name})"
        for qualified, fn in callables
        for p in inspect.signature(fn).parameters.values()
        if p.name in ARRAY_PARAMETERS and p.annotation is inspect.Parameter.empty
    ]
    assert not bare, bare
