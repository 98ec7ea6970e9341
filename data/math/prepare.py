"""
[Math] data: question/answer pairs (loss on the answer) and few-shot arithmetic chains.

    python data/math/prepare.py                          # offline: generated, answers checked with sympy
    python data/math/prepare.py --source=hub             # meta-math/MetaMathQA + Open-Platypus's MATH/PRM800K/TheoremQA rows
    python data/math/prepare.py --source=qa.jsonl        # local {"query","response"} or {"question","answer"} or {"text"}

Also writes data/math/eval.jsonl: held-out items from a different seed (exact-match answers,
formats in meta.json "eval.answer_format"); training documents containing them are dropped.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep, records  # noqa: E402
from nanophi import gen_math  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import Hub, Schema, Source, need  # noqa: E402

num_generated = 20000   # offline training items
eval_seed = 424242      # held-out items come from another seed
n_eval = 200


def generated(r):
    if "text" in r:
        return [textformat.plain("math", r["text"])]
    return [textformat.qa("math", r["question"], r["answer"])]


SCHEMAS = [
    # one 396 MB JSON array: streamed item by item (ijson), never parsed whole
    Schema("meta-math/MetaMathQA", ["query", "response"],
           lambda r: [textformat.qa("math", need(r, "query"), need(r, "response"))],
           hub=Hub("meta-math/MetaMathQA", "MetaMathQA-395K.json", "json_array", rows=395000, tokens_per_doc=260, bytes_per_doc=1000)),
    Schema("garage-bAInd/Open-Platypus", ["instruction", "output", "data_source"], lambda r: records.platypus("math", r),
           hub=records.OPEN_PLATYPUS),
    Schema("qa", ["question", "answer"], lambda r: [textformat.qa("math", need(r, "question"), need(r, "answer"))]),
    Schema("text", ["text"], lambda r: [textformat.plain("math", need(r, "text"))]),
]


def offline(cfg):
    return [Source("math-generator", lambda: gen_math.math_items(cfg.num_generated, cfg.seed),
                   Schema("generated", [], generated))]


def eval_items(cfg):
    qa_only = ((w, it) for w, it in gen_math.math_items(10 ** 9, cfg.eval_seed) if "question" in it)
    return dataprep.unique_items(qa_only, cfg.n_eval)


def main(argv=None):
    return dataprep.run("math", SCHEMAS, offline, argv, eval_items=eval_items,
                        meta_extra={"loss": "answer only (QA); whole text (chains)",
                                    "eval": {"answer_format": gen_math.MATH_ANSWER_FORMAT,
                                             "prompt": "textformat.qa('math', question) -> '[Math] <question>\\nAnswer:'"}},
                        # generated items differ in a number or two: near-dup would drop distinct problems
                        near_dedup=False, num_generated=num_generated, eval_seed=eval_seed, n_eval=n_eval)


if __name__ == "__main__":
    dataprep.cli(main)
