"""
Offline built-in sources: a real multitask corpus on a machine with no internet.

- textbooks: Python's own documentation. Debian's python3.11-doc ships the reStructuredText
  sources (tutorial, howto, library and language reference) under PY_DOC_SOURCES; they are
  cleaned of reST markup and split into one document per section. Always available besides:
  pydoc_data.topics (the help() topics) and the standard library's module docstrings.
- code: functions with docstrings from the installed standard library, read with `ast`.
- math: generated problems whose answers are checked with sympy.
- logic: generated problems whose answers are checked by a solver (sympy's `satisfiable`,
  or a transitive closure for ordering/containment chains).
- excerpt: questions about documentation excerpts whose answers come from the excerpt itself.

Every generator yields (where, record): `where` names the origin for messages, `record` is a
plain dict the task's prepare.py renders with textformat. Generators are deterministic for a seed.
"""
import ast
import functools
import importlib
import itertools
import os
import random
import re
import sys
import sysconfig
import textwrap

PY_DOC_SOURCES = os.environ.get("NANOPHI_PYDOC_SOURCES", "/usr/share/doc/python3.11/html/_sources")
DOC_SECTIONS = ("tutorial", "howto", "library", "reference")

# ---------------------------------------------------------------------------------------------
# reStructuredText -> plain text

# directives whose whole block is dropped (navigation, metadata, test scaffolding)
_DROP = {"index", "toctree", "sectionauthor", "moduleauthor", "module", "currentmodule", "highlight",
         "testsetup", "testcleanup", "include", "literalinclude", "tabularcolumns", "only", "raw",
         "contents", "program", "audit-event", "audit-event-table", "role", "default-role", "image",
         "figure", "csv-table", "list-table", "productionlist", "ifconfig", "impl-detail", "rubric"}
# API description directives: keep the signature as a line, then the body
_API = {"function", "method", "class", "data", "attribute", "exception", "decorator", "classmethod",
        "staticmethod", "coroutinefunction", "coroutinemethod", "awaitablefunction", "opcode",
        "cmdoption", "describe", "object", "pdbcommand", "decoratormethod", "option", "envvar",
        "abstractmethod", "property", "2to3fixer", "monitoring-event"}
_ADMONITION = {"note": "Note", "warning": "Warning", "seealso": "See also", "caution": "Caution",
               "important": "Important", "tip": "Tip", "hint": "Hint", "attention": "Attention",
               "danger": "Danger", "versionadded": "New in version", "versionchanged": "Changed in version",
               "deprecated": "Deprecated since version", "deprecated-removed": "Deprecated since version",
               "topic": "", "sidebar": ""}
_UNDERLINE = re.compile(r"^([=\-~^*#\"'`+.:_])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_ROLE = re.compile(r":[\w:+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")
_LITERAL = re.compile(r"``(.+?)``")
_FOOTREF = re.compile(r"\s*\[#[\w-]*\]_")


def _role_text(m):
    body = m.group(1)
    if "<" in body and body.endswith(">"):      # :ref:`text <label>` -> text
        body = body[:body.rindex("<")].strip()
    body = body.lstrip("!")
    if body.startswith("~"):                    # :func:`~os.path.join` -> join
        body = body[1:].rsplit(".", 1)[-1]
    return f"`{body}`"


def clean_inline(line):
    line = _ROLE.sub(_role_text, line)
    line = _LINK.sub(lambda m: m.group(1), line)
    line = _LITERAL.sub(lambda m: f"`{m.group(1)}`", line)
    line = _FOOTREF.sub("", line)
    line = re.sub(r"\*\*(\S.*?)\*\*", r"\1", line)
    line = re.sub(r"\|(\w+)\|", r"\1", line)
    line = re.sub(r"(?<!\\)`_\b", "", line)
    return line


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def rst_to_sections(text):
    """reST text -> [(title, level, body)], markup removed. Level = order of first appearance of the underline char."""
    lines = text.expandtabs(4).splitlines()
    levels, sections = [], []
    title, level, body = None, 0, []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        # heading: text line with an underline at least as long (optionally with an overline)
        overlined = i > 0 and _UNDERLINE.match(lines[i - 1]) and not lines[i - 1].startswith(" ")
        if line.strip() and not _UNDERLINE.match(line) and _UNDERLINE.match(nxt) and len(nxt.rstrip()) >= len(line.rstrip()) \
                and (_indent(line) == 0 or overlined):
            if body and body[-1] and _UNDERLINE.match(body[-1]):
                body.pop()  # overline
            char = nxt.strip()[0]
            if char not in levels:
                levels.append(char)
            sections.append((title, level, body))
            title, level, body = clean_inline(line.strip()), levels.index(char), []
            i += 2
            continue
        if _UNDERLINE.match(line) and len(line.strip()) >= 4 and not line.startswith(" "):
            i += 1  # transitions (----) and overlines
            continue
        m = _DIRECTIVE.match(line)
        if m or (line.lstrip().startswith(".. ") and not line.lstrip().startswith(".. _")) or line.lstrip().startswith(".. _"):
            ind = _indent(line)
            name, arg = (m.group(2), m.group(3)) if m else ("comment", "")
            name = name.split(":")[-1] if name.startswith("py:") or name.startswith("c:") else name
            # the directive's block: following lines indented deeper, or blank
            j = i + 1
            block = []
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > ind):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
                j -= 1
            block = [b for b in block if not re.match(r"^\s+:[\w-]+:(\s.*)?$", b)]  # directive options
            inner = textwrap.dedent("\n".join(block)).splitlines()
            if m and name in _API:
                body.append(clean_inline(arg.strip()))
                body.extend("    " + clean_inline(b) if b.strip() else "" for b in inner)
            elif m and name in _ADMONITION:
                head = _ADMONITION[name]
                first = f"{head} {arg.strip()}".strip() if head or arg.strip() else ""
                if first:
                    body.append(clean_inline(first) + ":" if inner else clean_inline(first) + ".")
                body.extend(clean_inline(b) for b in inner)
            elif m and name in ("code-block", "sourcecode", "code", "doctest", "testcode", "testoutput"):
                body.extend("    " + b if b.strip() else "" for b in inner)
            elif m and name not in _DROP:
                body.extend(clean_inline(b) for b in inner)
            body.append("")
            i = j
            continue
        stripped = line.rstrip()
        if stripped.strip() == "::":
            i += 1
            continue
        if stripped.endswith("::"):
            stripped = stripped[:-1]
        body.append(clean_inline(stripped) if not stripped.startswith("    ") else stripped)
        i += 1
    sections.append((title, level, body))
    out = []
    for title, level, body in sections:
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip()
        if title or text:
            out.append((title, level, text))
    return out


def _chunks(text, max_chars):
    """Split text at paragraph boundaries into pieces of at most ~max_chars."""
    parts, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) > max_chars:
            parts.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        parts.append(cur)
    return parts


def doc_sections(root=PY_DOC_SOURCES, subdirs=DOC_SECTIONS, min_chars=400, max_chars=6000):
    """Sections of the Python documentation as {"title", "text", "page"}; empty when not installed."""
    if not os.path.isdir(root):
        return
    for sub in subdirs:
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if not name.endswith(".rst.txt"):
                continue
            path = os.path.join(d, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                sections = rst_to_sections(f.read())
            page = next((t for t, _, _ in sections if t), name[:-8])
            page = re.sub(r"\s+---\s+", " — ", page.replace("`", ""))
            merged = []  # short sections join the previous one
            for title, _, text in sections:
                if not text.strip():
                    continue
                title = re.sub(r"\s+---\s+", " — ", (title or page).replace("`", ""))
                if merged and len(text) < min_chars:
                    merged[-1][1] += f"\n\n{title}\n\n{text}" if title != merged[-1][0] else f"\n\n{text}"
                else:
                    merged.append([title, text])
            for title, text in merged:
                full = title if title == page else f"{page}: {title}"
                for k, chunk in enumerate(_chunks(text, max_chars)):
                    if len(chunk) < min_chars // 2:
                        continue
                    where = f"{sub}/{name} §{title}" + (f" part {k + 1}" if k else "")
                    yield where, {"title": full, "text": chunk, "page": page}


def pydoc_topics():
    """The interactive help() topics that ship with every CPython (pydoc_data.topics)."""
    from pydoc_data.topics import topics
    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) >= 200:
            title = text.splitlines()[0].strip() if text.splitlines()[0].strip() else name
            yield f"pydoc_data.topics[{name!r}]", {"title": title, "text": text, "topic": name}


# ---------------------------------------------------------------------------------------------
# the standard library's own source

_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages",
              "__pycache__", "ensurepip", "__phello__", "pydoc_data"}


def stdlib_files():
    """(module name, path) of the installed standard library's .py files, tests excluded."""
    root = sysconfig.get_paths()["stdlib"]
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith("config-"))
        for f in sorted(files):
            if f.endswith(".py") and not f.startswith("test_"):
                rel = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), os.path.join(d, f)


def _parse(path):
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        return src, ast.parse(src)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None, None


def module_docstrings(min_chars=200):
    """Module docstrings: pure-Python stdlib modules via ast, C modules via import (no side effects)."""
    seen = set()
    for mod, path in stdlib_files():
        if mod.split(".")[-1].startswith("_") or mod in ("this", "antigravity"):
            continue
        doc = _module_docstring(path)
        if doc and len(doc) >= min_chars:
            seen.add(mod)
            yield f"{path} (module docstring)", {"module": mod, "text": doc}
    for mod in sorted(sys.builtin_module_names) + _extension_modules():
        if mod in seen or mod.startswith("_"):
            continue
        try:
            doc = importlib.import_module(mod).__doc__
        except Exception:
            continue
        if doc and len(doc) >= min_chars:
            yield f"{mod} (built-in module docstring)", {"module": mod, "text": doc.strip()}


def _module_docstring(path):
    """The module docstring from the first tokens of a file (no full parse: tokenize is lazy)."""
    import tokenize
    try:
        with open(path, "rb") as f:
            for tok in tokenize.tokenize(f.readline):
                if tok.type in (tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                    continue
                if tok.type == tokenize.STRING:
                    value = ast.literal_eval(tok.string)
                    return inspect_clean(value) if isinstance(value, str) else None
                return None
    except (SyntaxError, tokenize.TokenError, UnicodeDecodeError, ValueError):
        return None


def inspect_clean(doc):
    import inspect
    return inspect.cleandoc(doc)


def _extension_modules():
    d = sysconfig.get_paths().get("platstdlib", "")
    dyn = os.path.join(d, "lib-dynload")
    if not os.path.isdir(dyn):
        return []
    return sorted({f.split(".")[0] for f in os.listdir(dyn) if f.endswith(".so") and not f.startswith("_")})


def split_function(source):
    """
    A function's source -> {"signature", "docstring", "prompt", "body", "code"}, or None.
    prompt = signature + docstring (what phi-1's CodeExercises show), body = the rest,
    code = the function without its docstring (CodeSearchNet-style code after the docstring).
    """
    source = textwrap.dedent(source)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    node = tree.body[0]
    doc = ast.get_docstring(node)
    if not doc or len(node.body) < 2:
        return None
    lines = source.splitlines()
    first = node.body[0]
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    if first.lineno == node.lineno:      # def f(): "doc"; ... on one line
        return None
    sig = lines[start - 1:first.lineno - 1]
    body = lines[first.end_lineno:node.end_lineno]
    if not any(b.strip() for b in body):
        return None
    return {"signature": "\n".join(sig), "docstring": doc, "prompt": "\n".join(lines[start - 1:first.end_lineno]),
            "body": "\n".join(body), "code": "\n".join(sig + body)}


def stdlib_functions(min_body_lines=2, max_lines=60):
    """Functions and methods with docstrings from the standard library."""
    for mod, path in stdlib_files():
        src, tree = _parse(path)
        if tree is None:
            continue
        lines = src.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not ast.get_docstring(node):
                continue
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if node.end_lineno - start + 1 > max_lines:
                continue
            parts = split_function("\n".join(lines[start - 1:node.end_lineno]))
            if parts is None or len([b for b in parts["body"].splitlines() if b.strip()]) < min_body_lines:
                continue
            parts.update(module=mod, name=node.name)
            yield f"{path}:{node.lineno} {node.name}", parts


# ---------------------------------------------------------------------------------------------
# excerpt questions from the documentation (answers taken from the excerpt itself)

_DEF = re.compile(r"^((?:The |An? )?`?[\w.]+(?:\(\))?`?(?: \w+)?) (is|are|returns|return|creates|provides) ([^.]{10,200}\.)$")


def _sentences(text):
    flat = " ".join(l.strip() for l in text.split("\n\n")[0].splitlines() if not l.startswith("    "))
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`])", flat) if s.strip()]


def excerpt_items(seed=1337, max_chars=1200):
    """{"text", "response", "kind"} items: topic of a section, module of a docstring, a definition sentence."""
    rng = random.Random(seed)
    for where, rec in itertools.chain(doc_sections(), pydoc_topics()):
        text = _chunks(rec["text"], max_chars)[0]
        if len(text) < 200:
            continue
        title = rec["title"]
        yield where + " (topic)", {"kind": "topic", "text": f"{text}\n\nWhat is this excerpt about?",
                                    "response": f"It is about {title}."}
        for s in _sentences(text):
            m = _DEF.match(s)
            if m and rng.random() < 0.5:
                subject = m.group(1)
                yield where + " (definition)", {
                    "kind": "definition",
                    "text": f"{text}\n\nAccording to the excerpt, what {'is' if m.group(2) in ('is', 'returns', 'creates', 'provides') else 'are'} {subject}?"
                    if m.group(2) in ("is", "are") else f"{text}\n\nAccording to the excerpt, what does {subject} do?",
                    "response": s}
                break
    for where, rec in module_docstrings():
        text = _chunks(rec["text"], max_chars)[0]
        yield where, {"kind": "module", "text": f"{text}\n\nWhich Python module does this documentation describe?",
                      "response": f"The `{rec['module']}` module."}


# ---------------------------------------------------------------------------------------------
# math: generated, every answer checked with sympy

def sym_eval(expr_text):
    """An arithmetic expression's exact value in sympy numbers (parsed with ast: sympify's parser is ~30x slower)."""
    import operator
    import sympy
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return sympy.Integer(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))   # Integer / Integer is an exact Rational
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Tuple):
            return sympy.Tuple(*[ev(e) for e in node.elts])
        raise ValueError(f"unsupported expression {ast.dump(node)}")
    return ev(ast.parse(expr_text, mode="eval").body)


def _check(expr_text, value):
    got = sym_eval(expr_text)
    if got != value:
        raise AssertionError(f"math generator bug: {expr_text} = {got}, not {value}")


def fmt_poly(coeffs, var="x"):
    """[1, 5, 6] -> 'x^2 + 5x + 6' (the canonical answer format for polynomials)."""
    deg = len(coeffs) - 1
    out = []
    for k, c in enumerate(coeffs):
        p = deg - k
        if c == 0:
            continue
        mag = abs(c)
        term = (f"{var}^{p}" if p > 1 else var if p == 1 else "")
        term = (str(mag) if mag != 1 or p == 0 else "") + term
        out.append(("- " if c < 0 else "+ ") + term)
    if not out:
        return "0"
    s = " ".join(out)
    return s[2:] if s.startswith("+ ") else "-" + s[2:]


_NAMES = ["Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
_THINGS = ["apples", "pencils", "stickers", "marbles", "books", "coins", "cards", "shells", "stamps", "cookies"]


def math_item(rng, kind=None):
    """One math item {"kind", "question", "answer"} or {"kind", "text"} (few-shot chains)."""
    import sympy
    kind = kind or rng.choice(["chain", "add", "sub", "mul", "div", "multi", "linear", "expand", "evaluate", "word"])
    if kind == "chain":
        op = rng.choice(["+", "-", "*"])
        a, n = rng.randint(1, 12), rng.randint(4, 8)
        if op == "+" and rng.random() < 0.5:
            eqs = [(f"{i}+{i}", 2 * i) for i in range(a, a + n)]      # 1+1=2 2+2=4 3+3=6
        elif op == "-":
            eqs = [(f"{a + 20}-{i}", a + 20 - i) for i in range(1, n + 1)]
        else:
            eqs = [(f"{a}{op}{i}", a + i if op == "+" else a * i) for i in range(1, n + 1)]
        _check("(" + ", ".join(e for e, _ in eqs) + ")", sympy.Tuple(*[v for _, v in eqs]))
        return {"kind": kind, "text": " ".join(f"{e}={v}" for e, v in eqs)}
    if kind in ("add", "sub", "mul", "div"):
        digits = rng.choice([1, 2, 2, 3, 3, 4])
        lo, hi = 10 ** (digits - 1), 10 ** digits - 1
        if kind == "div":
            b, q = rng.randint(2, 12 if digits < 3 else 99), rng.randint(lo, hi)
            a, expr, sym = b * q, f"{b * q} / {b}", "/"
        else:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi) if kind != "mul" else rng.randint(2, 99)
            sym = {"add": "+", "sub": "-", "mul": "*"}[kind]
            expr = f"{a} {sym} {b}"
        value = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a // b}[kind]()
        _check(expr, value)
        q = rng.choice(["What is {e}?", "Compute {e}.", "Calculate {e}.", "{e} = ?"]).format(e=expr)
        return {"kind": "arithmetic", "question": q, "answer": str(value)}
    if kind == "multi":
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 12)
        form = rng.choice(["({a} + {b}) * {c}", "{a} * {c} - {b}", "({a} - {b}) * {c}", "{a} + {b} * {c}"])
        expr = form.format(a=a, b=b, c=c)
        value = int(sym_eval(expr))
        return {"kind": "arithmetic", "question": f"What is {expr}?", "answer": str(value)}
    x = sympy.Symbol("x")
    if kind == "linear":
        a = rng.choice([i for i in range(-9, 10) if i not in (0,)])
        sol, b = rng.randint(-20, 20), rng.randint(-30, 30)
        c = a * sol + b
        lhs = fmt_poly([a, b])
        # a != 0, so the equation has one solution; sympy checks that it is sol
        if (a * x + b - c).subs(x, sol) != 0:
            raise AssertionError(f"math generator bug: {lhs} = {c} is not solved by x = {sol}")
        return {"kind": "linear", "question": f"Solve for x: {lhs} = {c}", "answer": f"x = {sol}"}
    if kind == "expand":
        a, b = rng.randint(-9, 9), rng.randint(-9, 9)
        poly = sympy.Poly(sympy.expand((x + a) * (x + b)), x)
        answer = fmt_poly([int(c) for c in poly.all_coeffs()])
        if answer != fmt_poly([1, a + b, a * b]):
            raise AssertionError(f"math generator bug: expand (x{a:+})(x{b:+})")
        return {"kind": "expand", "question": f"Expand ({fmt_poly([1, a])})({fmt_poly([1, b])}).", "answer": answer}
    if kind == "evaluate":
        a, b, v = rng.randint(-9, 9) or 2, rng.randint(-20, 20), rng.randint(-9, 9)
        value = int((a * x + b).subs(x, v))
        if value != a * v + b:
            raise AssertionError("math generator bug: evaluate")
        return {"kind": "evaluate", "question": f"Evaluate {fmt_poly([a, b])} when x = {v}.", "answer": str(value)}
    # word problems
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    form = rng.randrange(3)
    if form == 0:
        q, expr = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", f"{a} + {b}"
    elif form == 1:
        a = a + b
        q, expr = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?", f"{a} - {b}"
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q, expr = f"{name} has {a} boxes with {b} {thing} in each box. How many {thing} is that in total?", f"{a} * {b}"
    value = int(sym_eval(expr))
    return {"kind": "word", "question": q, "answer": str(value)}


def math_items(n, seed):
    rng = random.Random(seed)
    for i in range(n):
        yield f"math generator seed={seed} #{i}", math_item(rng)


MATH_ANSWER_FORMAT = {
    "arithmetic": "an integer in decimal, e.g. '84' or '-12'",
    "word": "an integer, e.g. '19'",
    "evaluate": "an integer, e.g. '11'",
    "linear": "'x = <integer>', e.g. 'x = 3'",
    "expand": "a polynomial in x, highest power first, '^' for powers, no '*', e.g. 'x^2 + 5x + 6'",
}


# ---------------------------------------------------------------------------------------------
# logic: generated, every answer checked by a solver

_NONSENSE = ["wugs", "blickets", "daxes", "feps", "glorps", "zorbs", "tufas", "lorks", "mibs", "snerts",
             "vosks", "quels", "brindles", "yomps", "kels", "trobs"]
_RELATIONS = [("taller than", "Is {a} taller than {b}?"), ("older than", "Is {a} older than {b}?"),
              ("faster than", "Is {a} faster than {b}?"), ("heavier than", "Is {a} heavier than {b}?")]
_PLACES = [("beavers", "live in", "dams"), ("dams", "are on", "rivers"), ("rivers", "flow through", "valleys"),
           ("the key", "is in", "the box"), ("the box", "is in", "the drawer"), ("the drawer", "is in", "the desk"),
           ("the desk", "is in", "the office"), ("the office", "is in", "the tower")]


def _closure(edges):
    reach = {a: {b} for a, b in edges}
    changed = True
    while changed:
        changed = False
        for a in list(reach):
            for b in list(reach[a]):
                new = reach.get(b, set()) - reach[a]
                if new:
                    reach[a] |= new
                    changed = True
    return reach


@functools.lru_cache(maxsize=None)
def _satisfiable(formula):
    """sympy's verdict, cached: formulas repeat (the category words are only labels)."""
    from sympy.logic.inference import satisfiable
    return bool(satisfiable(formula))


def logic_item(rng, kind=None):
    """One logic item {"kind", "question", "answer"}; answers 'yes'/'no' or 'true'/'false'."""
    kind = kind or rng.choice(["order", "order", "place", "syllogism", "syllogism", "entail", "boolean"])
    return _LOGIC_KINDS[kind](rng)


def _logic_order(rng):
    """Who is taller/older than whom: transitive chains of a relation."""
    rel, ask = rng.choice(_RELATIONS)
    people = rng.sample(_NAMES, rng.randint(3, 5))
    edges = list(zip(people, people[1:]))
    facts = [f"{a} is {rel} {b}." for a, b in edges]
    rng.shuffle(facts)
    a, b = rng.sample(people, 2)
    reach = _closure(edges)
    answer = "yes" if b in reach.get(a, set()) else "no"
    return {"kind": "order", "question": " ".join(facts) + " " + ask.format(a=a, b=b), "answer": answer}


def _logic_place(rng):
    """What is inside what: chains of containment."""
    chain = [("beavers", "live in", "dams"), ("dams", "are on", "rivers")] if rng.random() < 0.3 else None
    if chain:
        a, b = ("beavers", "rivers") if rng.random() < 0.6 else ("rivers", "beavers")
        q = f"If beavers live in dams and dams are on rivers, do {a} live on {b}?"
        answer = "yes" if b in _closure([("beavers", "dams"), ("dams", "rivers")]).get(a, set()) else "no"
        return {"kind": "place", "question": q, "answer": answer}
    objs = ["the key", "the box", "the drawer", "the desk", "the office", "the tower", "the bag", "the car"]
    items = rng.sample(objs, rng.randint(3, 5))
    edges = list(zip(items, items[1:]))
    facts = [f"{a.capitalize()} is in {b}." for a, b in edges]
    rng.shuffle(facts)
    a, b = rng.sample(items, 2)
    answer = "yes" if b in _closure(edges).get(a, set()) else "no"
    return {"kind": "place", "question": " ".join(facts) + f" Is {a} in {b}?", "answer": answer}


def _logic_syllogism(rng):
    """Syllogisms over nonsense words, each checked by sympy."""
    from sympy import symbols
    from sympy.logic.boolalg import And, Implies, Not
    A, B, C = rng.sample(_NONSENSE, 3)
    a, b, c = symbols("a b c")
    form = rng.randrange(7)
    if form == 0:
        prem, text = And(Implies(a, b), Implies(b, c)), f"All {A} are {B}. All {B} are {C}."
        q, test, mode = f"Are all {A} {C}?", And(a, Not(c)), "valid"
    elif form == 1:
        prem, text = And(Implies(a, b), Implies(b, Not(c))), f"All {A} are {B}. No {B} are {C}."
        q, test, mode = f"Can one of the {A} be one of the {C}?", And(a, c), "possible"
    elif form == 2:
        prem, text = And(Implies(a, b), Implies(c, b)), f"All {A} are {B}. All {C} are {B}."
        q, test, mode = f"Must all {A} be {C}?", And(a, Not(c)), "valid"
    elif form == 3:
        prem, text = And(Implies(a, Not(b)), Implies(c, b)), f"No {A} are {B}. All {C} are {B}."
        q, test, mode = f"Can one of the {C} be one of the {A}?", And(c, a), "possible"
    elif form == 4:
        prem, text = And(Implies(a, b), Implies(b, c)), f"All {A} are {B}. All {B} are {C}."
        q, test, mode = f"Must all {C} be {A}?", And(c, Not(a)), "valid"
    elif form == 5:
        prem, text = And(Implies(a, b), Implies(b, Not(c))), f"All {A} are {B}. No {B} are {C}."
        q, test, mode = f"Is it true that no {A} are {C}?", And(a, c), "valid"
    else:
        prem, text = And(Implies(a, b), Implies(b, c)), f"All {A} are {B}. All {B} are {C}."
        q, test, mode = f"Can one of the {A} be one of the {C}?", And(a, c), "possible"
    sat = _satisfiable(And(prem, test))
    # "valid": the conclusion holds iff its counterexample is impossible; "possible": iff satisfiable
    answer = ("no" if sat else "yes") if mode == "valid" else ("yes" if sat else "no")
    return {"kind": "syllogism", "question": f"{text} {q}", "answer": answer}


def _logic_entail(rng):
    """Modus ponens and tollens, and their two fallacies, checked by sympy."""
    from sympy import symbols
    from sympy.logic.boolalg import And, Implies, Not
    p, q_ = symbols("p q")
    facts = [("it is raining", "the street is wet"), ("the alarm rings", "Maya wakes up"),
             ("the switch is on", "the lamp is lit"), ("the door is locked", "the key is needed"),
             ("it is noon", "the shop is open")]
    P, Q = rng.choice(facts)
    form = rng.randrange(4)
    given, claim = [(Implies(p, q_), f"If {P}, then {Q}.")], None
    if form == 0:
        given.append((p, f"{P[0].upper() + P[1:]}."))
        claim = (q_, f"{Q}")
    elif form == 1:
        given.append((Not(q_), f"It is not the case that {Q}."))
        claim = (Not(p), f"it is not the case that {P}")
    elif form == 2:
        given.append((q_, f"{Q[0].upper() + Q[1:]}."))
        claim = (p, f"{P}")
    else:
        given.append((Not(p), f"It is not the case that {P}."))
        claim = (Not(q_), f"it is not the case that {Q}")
    prem = And(*[g for g, _ in given])
    entailed = not _satisfiable(And(prem, Not(claim[0])))
    text = " ".join(t for _, t in given)
    return {"kind": "entail", "question": f"{text} True or false: it must be that {claim[1]}.",
            "answer": "true" if entailed else "false"}


def _logic_boolean(rng):
    """A boolean expression to evaluate, checked against sympy."""
    from sympy.logic.boolalg import And, Not, Or
    vals = [rng.choice([True, False]) for _ in range(3)]
    ops = [rng.choice(["and", "or"]) for _ in range(2)]
    neg = [rng.random() < 0.3 for _ in range(3)]
    words = [("not " if n else "") + str(v).lower() for v, n in zip(vals, neg)]
    text = f"({words[0]} {ops[0]} {words[1]}) {ops[1]} {words[2]}"
    from sympy import true, false
    terms = [(Not(true if v else false) if n else (true if v else false)) for v, n in zip(vals, neg)]
    first = And(terms[0], terms[1]) if ops[0] == "and" else Or(terms[0], terms[1])
    value = And(first, terms[2]) if ops[1] == "and" else Or(first, terms[2])
    py = eval(text.replace("true", "True").replace("false", "False"))
    if bool(value) != py:
        raise AssertionError(f"logic generator bug: {text}")
    return {"kind": "boolean", "question": f"True or false: {text}", "answer": "true" if py else "false"}


_LOGIC_KINDS = {"order": _logic_order, "place": _logic_place, "syllogism": _logic_syllogism,
                "entail": _logic_entail, "boolean": _logic_boolean}


def logic_items(n, seed):
    rng = random.Random(seed)
    for i in range(n):
        yield f"logic generator seed={seed} #{i}", logic_item(rng)


LOGIC_ANSWER_FORMAT = {
    "order": "'yes' or 'no'", "place": "'yes' or 'no'", "syllogism": "'yes' or 'no'",
    "entail": "'true' or 'false'", "boolean": "'true' or 'false'",
}
