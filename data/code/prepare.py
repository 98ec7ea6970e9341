"""
[Code] data: Python functions with docstrings, in two shapes per function:
CodeSearchNet-style (docstring, then the code; all trained) and phi-1 CodeExercises-style
(signature + docstring as the prompt, the body trained).

    python data/code/prepare.py                        # offline: the installed standard library, via ast
    python data/code/prepare.py --source=hub           # CodeSearchNet's Python functions + Open-Platypus's leetcode rows
    python data/code/prepare.py --source=funcs.jsonl   # a local file in a CodeSearchNet schema (or .txt)
    python data/code/prepare.py --source=data/synth/exercises.jsonl --skip_bad=True   # data/synthesize.py's exercises
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep, records  # noqa: E402
from nanophi import offline_sources  # noqa: E402
from nanophi import synth  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import Hub, Schema, Source, need  # noqa: E402


def both_styles(parts):
    return [textformat.code(parts["code"], parts["docstring"]), textformat.code_exercise(parts["prompt"], parts["body"])]


def code_search_net(r):
    # the data files' own names (original_string, code, docstring), or the old loading script's renames
    raw = "original_string" in r
    whole = need(r, "original_string" if raw else "whole_func_string")
    code = need(r, "code" if raw else "func_code_string")
    doc = need(r, "docstring" if raw else "func_documentation_string", allow_empty=True)
    parts = offline_sources.split_function(whole)
    if parts:
        return both_styles(parts)
    # not parseable by this Python (CodeSearchNet has Python 2 code): keep the function as written
    return [textformat.code(code, doc if doc.strip() and doc.strip() not in code else None)]


def synthetic_exercise(r):
    """A reply of data/synthesize.py --kind=exercise: the function's signature+docstring is the prompt."""
    parts = synth.parse_exercise(need(r, "text"))
    if parts is None:
        raise records.FieldError("text", "the reply holds no Python function with a docstring and a body")
    return [textformat.code_exercise(parts["exercise"], parts["solution"])]


SCHEMAS = [
    # the repository's own data/python.zip: gzipped JSON lines per split, read member by member
    Schema("code-search-net/code_search_net", ["original_string", "code", "docstring"], code_search_net,
           hub=Hub("code-search-net/code_search_net", "data/python.zip!python/final/jsonl/train/*.jsonl.gz",
                   "zip_jsonl_gz", rows=412178, tokens_per_doc=420, bytes_per_doc=2100)),
    Schema("synthetic-exercise", ["kind", "exercise_kind", "text"], synthetic_exercise),
    Schema("code_search_net", ["func_code_string", "func_documentation_string", "whole_func_string"], code_search_net),
    Schema("garage-bAInd/Open-Platypus", ["instruction", "output", "data_source"], lambda r: records.platypus("code", r),
           hub=records.OPEN_PLATYPUS),
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
