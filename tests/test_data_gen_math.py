from nanophi import gen_math


def test_math_answers_are_right():
    import random
    rng = random.Random(3)
    for _ in range(300):
        it = gen_math.math_item(rng)
        if it["kind"] == "chain":
            for eq in it["text"].split():
                lhs, rhs = eq.split("=")
                assert eval(lhs) == int(rhs)
        elif it["kind"] in ("arithmetic",) and "boxes" not in it["question"]:
            expr = it["question"].replace("What is ", "").replace("Compute ", "").replace("Calculate ", "").replace(" = ?", "")
            assert eval(expr.rstrip("?.")) == int(it["answer"])
        elif it["kind"] == "linear":
            import re
            lhs, c = it["question"].replace("Solve for x: ", "").split(" = ")
            m = re.fullmatch(r"(-?)(\d*)x(?: ([+-]) (\d+))?", lhs)
            coef = int(m[2] or 1) * (-1 if m[1] else 1)
            b = int(m[4] or 0) * (-1 if m[3] == "-" else 1)
            x = int(it["answer"].split(" = ")[1])
            assert it["answer"] == f"x = {x}" and coef * x + b == int(c)
        elif it["kind"] == "expand":
            import sympy
            x = sympy.Symbol("x")
            q = it["question"][len("Expand "):-1].replace("x", "*x").replace("(*x", "(x").replace(")(", ")*(")
            want = sympy.expand(sympy.sympify(q))
            got = sympy.sympify(it["answer"].replace("^", "**").replace("x", "*x").lstrip("*").replace(" *x", " x")
                                .replace("- *x", "- x").replace("+ *x", "+ x"))
            assert sympy.expand(want - got) == 0, it
