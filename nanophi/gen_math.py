"""
Generated math problems: every answer is checked with sympy. Used by data/math/prepare.py.

Each generator yields (where, record): `where` names the origin for messages, `record` is a plain
dict the task's prepare.py renders with textformat. Deterministic for a seed.
"""
import ast
import random

from nanophi import showcase

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


def _check_chain(text):
    """'1+1=2 2+2=4' -> every equation checked with sympy."""
    import sympy
    eqs = [e.split("=") for e in text.split()]
    _check("(" + ", ".join(lhs for lhs, _ in eqs) + ",)", sympy.Tuple(*[sympy.Integer(int(v)) for _, v in eqs]))


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


NAMES = ["Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
_THINGS = ["apples", "pencils", "stickers", "marbles", "books", "coins", "cards", "shells", "stamps", "cookies"]


def math_item(rng, kind=None):
    """One math item {"kind", "question", "answer"} or {"kind", "text"} (few-shot chains)."""
    import sympy
    # half the items are chains: a 16M model learns the showcase's sum families in minutes only from
    # many of them (the question kinds, the other half, stay 0-3% exact match at this size anyway)
    kind = kind or rng.choice(["chain"] * 9 + ["add", "sub", "mul", "div", "multi", "linear", "expand", "evaluate", "word"])
    if kind == "chain":
        op = rng.choice(["double", "running"] * 4 + ["-", "*"])
        if op in ("double", "running"):  # 1+1=2 2+2=4 ... / 1+1=2 1+2=3 ...: the training side, no held-out query
            item = (showcase.doubling if op == "double" else showcase.running)(rng, held_out=False)
            _check_chain(item["text"])
            return {"kind": kind, "text": item["text"]}
        a, n = rng.randint(1, 12), rng.randint(4, 8)
        if op == "-":
            eqs = [(f"{a + 20}-{i}", a + 20 - i) for i in range(1, n + 1)]
        else:
            eqs = [(f"{a}*{i}", a * i) for i in range(1, n + 1)]
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
    name, thing = rng.choice(NAMES), rng.choice(_THINGS)
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
