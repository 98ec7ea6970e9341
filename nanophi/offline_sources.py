"""
Offline built-in sources: a real multitask corpus on a machine with no internet.

- textbooks: Python's own documentation. Debian's python3.11-doc ships the reStructuredText
  sources (tutorial, howto, library and language reference) under PY_DOC_SOURCES; they are
  cleaned of reST markup and split into one document per section. Always available besides:
  pydoc_data.topics (the help() topics) and the standard library's module docstrings.
- code: functions with docstrings from the installed standard library, read with `ast`.
- excerpt: questions about documentation excerpts whose answers come from the excerpt itself.

Every generator yields (where, record): `where` names the origin for messages, `record` is a
plain dict the task's prepare.py renders with textformat. Generators are deterministic for a seed.
"""
import ast
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
