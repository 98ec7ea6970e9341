"""The package's modules import each other without a cycle, counting imports inside functions."""
import ast
import glob
import os

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nanophi")


def package_imports():
    """{module: {nanophi modules it imports anywhere in its file}}."""
    mods = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PKG, "*.py"))} - {"__init__"}
    graph = {}
    for m in mods:
        tree = ast.parse(open(os.path.join(PKG, m + ".py")).read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nanophi.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "nanophi":   # from nanophi import x, y
                    deps |= {a.name for a in node.names if a.name in mods}
                elif node.module.startswith("nanophi."):
                    deps.add(node.module.split(".")[1])
        graph[m] = deps & mods - {m}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_find_cycle_sees_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = package_imports()
    assert "dataprep" in graph and graph["dataprep"], "the parser found no imports at all"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
