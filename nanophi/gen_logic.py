"""
Generated logic problems: every answer is checked by a solver (sympy's `satisfiable`, or a
transitive closure for ordering/containment chains).
Used by data/logic/prepare.py.

Each generator yields (where, record) as gen_math does. Deterministic for a seed.
"""
import functools
import random

from nanophi.gen_math import NAMES

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
    """One logic item {"kind", "question", "answer"} (answers 'yes'/'no' or 'true'/'false'). The
    showcase's noun chains are a task of their own (data/chain/prepare.py)."""
    kind = kind or rng.choice(["order", "order", "place", "syllogism", "syllogism", "entail", "boolean"])
    return _LOGIC_KINDS[kind](rng)


def _logic_order(rng):
    """Who is taller/older than whom: transitive chains of a relation."""
    rel, ask = rng.choice(_RELATIONS)
    people = rng.sample(NAMES, rng.randint(3, 5))
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


# One row per syllogism form: two premises ("all"/"no", subject, predicate), the question, and the
# claim it asks about. Letters name the three nonsense words; the row order is the form number.
_SYLLOGISMS = [
    (("all", "A", "B"), ("all", "B", "C"), "Are all {A} {C}?", ("all", "A", "C")),
    (("all", "A", "B"), ("no", "B", "C"), "Can one of the {A} be one of the {C}?", ("some", "A", "C")),
    (("all", "A", "B"), ("all", "C", "B"), "Must all {A} be {C}?", ("all", "A", "C")),
    (("no", "A", "B"), ("all", "C", "B"), "Can one of the {C} be one of the {A}?", ("some", "C", "A")),
    (("all", "A", "B"), ("all", "B", "C"), "Must all {C} be {A}?", ("all", "C", "A")),
    (("all", "A", "B"), ("no", "B", "C"), "Is it true that no {A} are {C}?", ("no", "A", "C")),
    (("all", "A", "B"), ("all", "B", "C"), "Can one of the {A} be one of the {C}?", ("some", "A", "C")),
]


def _logic_syllogism(rng):
    """Syllogisms over nonsense words, each checked by sympy."""
    words = dict(zip("ABC", rng.sample(_NONSENSE, 3)))
    return syllogism(_SYLLOGISMS[rng.randrange(len(_SYLLOGISMS))], words)


def syllogism(row, words):
    """The item of one _SYLLOGISMS row with words {'A': ..., 'B': ..., 'C': ...}, its answer from sympy."""
    from sympy import symbols
    from sympy.logic.boolalg import And, Implies, Not
    var = dict(zip("ABC", symbols("a b c")))
    *premises, question, (claim, x, y) = row
    prem = And(*[Implies(var[s], var[p] if q == "all" else Not(var[p])) for q, s, p in premises])
    text = " ".join(f"{q.capitalize()} {words[s]} are {words[p]}." for q, s, p in premises)
    # "all x y" fails on an x that is not y, "no x y" on an x that is y; "some x y" holds if one can exist
    case = And(var[x], Not(var[y])) if claim == "all" else And(var[x], var[y])
    sat = _satisfiable(And(prem, case))
    answer = ("yes" if sat else "no") if claim == "some" else ("no" if sat else "yes")
    return {"kind": "syllogism", "question": f"{text} {question.format(**words)}", "answer": answer}


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
