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


def _syllogism_by_brute_force(question):
    """The answer read from the English alone: which kinds of individual (in A? in B? in C?) the premises
    allow to exist, then whether the question's claim holds in every world made of allowed kinds."""
    import itertools
    import re
    *premises, asked = [s.strip() for s in re.split(r"(?<=[.?])\s", question) if s.strip()]
    names = []
    for s in premises + [asked]:
        for w in re.findall(r"[a-z]+", s):
            if w in gen_logic._NONSENSE and w not in names:
                names.append(w)
    kinds = [dict(zip(names, bits)) for bits in itertools.product([False, True], repeat=len(names))]

    def allowed(kind):
        for p in premises:
            q, x, y = re.fullmatch(r"(All|No) (\w+) are (\w+)\.", p).groups()
            if kind[x] and kind[y] != (q == "All"):
                return False
        return True

    kinds = [k for k in kinds if allowed(k)]
    patterns = [(r"Are all (\w+) (\w+)\?", "all"), (r"Must all (\w+) be (\w+)\?", "all"),
                (r"Is it true that no (\w+) are (\w+)\?", "no"), (r"Can one of the (\w+) be one of the (\w+)\?", "some")]
    for pattern, claim in patterns:
        m = re.fullmatch(pattern, asked)
        if m:
            x, y = m.groups()
            if claim == "some":
                return "yes" if any(k[x] and k[y] for k in kinds) else "no"
            counter = [k for k in kinds if k[x] and k[y] == (claim == "no")]
            return "no" if counter else "yes"
    raise AssertionError(f"unknown syllogism question: {asked}")


def test_each_syllogism_form_answer_is_verified():
    words = {"A": "wugs", "B": "daxes", "C": "feps"}
    answers = []
    for row in gen_logic._SYLLOGISMS:
        item = gen_logic.syllogism(row, words)
        assert item["answer"] == _syllogism_by_brute_force(item["question"]), item
        answers.append(item["answer"])
    assert answers == ["yes", "no", "no", "no", "no", "yes", "yes"]
    # and every generated syllogism, whatever its words
    generated = [it for _, it in gen_logic.logic_items(1200, 11) if it["kind"] == "syllogism"]
    assert len(generated) > 250  # two kinds in seven
    for it in generated:
        assert it["answer"] == _syllogism_by_brute_force(it["question"]), it
