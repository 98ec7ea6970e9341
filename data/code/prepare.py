"""
[Code] data: Python functions with docstrings, in two shapes per function:
CodeSearchNet-style (docstring, then the code; all trained) and phi-1 CodeExercises-style
(signature + docstring as the prompt, the body trained).

    python data/code/prepare.py                        # offline: the installed standard library, via ast
    python data/code/prepare.py --source=hub           # code_search_net, config python
    python data/code/prepare.py --source=funcs.jsonl   # a local file in the code_search_net schema (or .txt)
    python data/code/prepare.py --source=data/synth/exercises.jsonl --skip_bad=True   # data/synthesize.py's exercises
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep  # noqa: E402
from nanophi import offline_sources  # noqa: E402
from nanophi import synth  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.dataprep import Schema, Source, need  # noqa: E402


def both_styles(parts):
    return [textformat.code(parts["code"], parts["docstring"]), textformat.code_exercise(parts["prompt"], parts["body"])]


def code_search_net(r):
    whole = need(r, "whole_func_string")
    code = need(r, "func_code_string")
    doc = need(r, "func_documentation_string", allow_empty=True)
    parts = offline_sources.split_function(whole)
    if parts:
        return both_styles(parts)
    # not parseable by this Python (CodeSearchNet has Python 2 code): keep the function as written
    return [textformat.code(code, doc if doc.strip() and doc.strip() not in code else None)]


def synthetic_exercise(r):
    """A reply of data/synthesize.py --kind=exercise: the function's signature+docstring is the prompt."""
    parts = synth.parse_exercise(need(r, "text"))
    if parts is None:
        raise dataprep.FieldError("text", "the reply holds no Python function with a docstring and a body")
    return [textformat.code_exercise(parts["exercise"], parts["solution"])]


SCHEMAS = [
    Schema("synthetic-exercise", ["kind", "exercise_kind", "text"], synthetic_exercise),
    Schema("code_search_net", ["func_code_string", "func_documentation_string", "whole_func_string"],
           code_search_net, hub=("code_search_net", "python")),
    Schema("text", ["text"], lambda r: [textformat.code(need(r, "text"))]),
]


def offline(cfg):
    return [Source("python-stdlib", offline_sources.stdlib_functions, Schema("offline", [], both_styles))]


def main(argv=None):
    return dataprep.run("code", SCHEMAS, offline, argv,
                        meta_extra={"loss": "whole text (CodeSearchNet style); body only (CodeExercises style)",
                                    "styles": ["codesearchnet", "codeexercises"]})


if __name__ == "__main__":
    dataprep.cli(main)
