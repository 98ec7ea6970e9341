from nanophi import gen_logic


def test_logic_answers_are_right():
    logic = {it["question"]: it["answer"] for _, it in gen_logic.logic_items(3000, 5) if "question" in it}
    assert logic.get("If beavers live in dams and dams are on rivers, do beavers live on rivers?") == "yes"
    for q, a in logic.items():
        if q.startswith("True or false: ("):
            assert str(eval(q[len("True or false: "):].replace("true", "True").replace("false", "False"))).lower() == a
        if " taller than " in q:   # check the chain by brute force over orderings
            import itertools
            facts = [f.split(" is taller than ") for f in q.split("? ")[0].split(". ")[:-1] if " is taller than " in f]
            facts = [(x, y.rstrip(".")) for x, y in facts]
            a_, b_ = q.rsplit("Is ", 1)[1].rstrip("?").split(" taller than ")
            people = sorted({p for f in facts for p in f})
            orders = [o for o in itertools.permutations(people) if all(o.index(x) < o.index(y) for x, y in facts)]
            assert ("yes" if all(o.index(a_) < o.index(b_) for o in orders) else "no") == a, q
