"""The package's modules import each other without a cycle, counting imports inside functions, and the
data filters (quality, decontam) stand on the data leaves only; docs/code.md maps every module."""
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


def reachable(graph, module):
    """Every package module that module imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for d in graph[todo.pop()] - seen:
            seen.add(d)
            todo.append(d)
    return seen


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


# the modules records, readers, features and writing stand on; none of them imports a filter or the pipeline
DATA_LEAVES = {"records", "features", "files", "tokenizer", "textformat", "tasks", "llm", "offline_sources", "plots"}


def test_reachable_follows_imports_through_others():
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}, "a") == {"b", "c"}


def test_filters_import_only_the_data_leaves():
    graph = package_imports()
    for m in ("quality", "decontam"):
        beyond = reachable(graph, m) - DATA_LEAVES
        assert not beyond, f"nanophi/{m}.py imports {sorted(beyond)}, which are not data leaves {sorted(DATA_LEAVES)}"
    for m in sorted(DATA_LEAVES):
        beyond = reachable(graph, m) - DATA_LEAVES
        assert not beyond, f"nanophi/{m}.py is meant to be a data leaf but imports {sorted(beyond)}"


def test_package_map_names_every_module():
    doc = open(os.path.join(os.path.dirname(PKG), "docs", "code.md")).read()
    missing = [m for m in sorted(package_imports()) if f"`{m}.py`" not in doc]
    assert not missing, f"docs/code.md's package map does not name {missing}"

