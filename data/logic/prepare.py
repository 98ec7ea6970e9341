"""
[Logic] data: reasoning questions with short verified answers (loss on the answer). The showcase's
two-step noun chains, also [Logic], are a task of their own: data/chain/prepare.py.

    python data/logic/prepare.py                         # offline: syllogisms, transitive chains, true/false, checked by a solver
    python data/logic/prepare.py --source=hub            # garage-bAInd/Open-Platypus rows from ReClor, ScienceQA, ARB
    python data/logic/prepare.py --source=qa.jsonl       # local {"instruction","input","output"} or {"question","answer"}

Also writes data/logic/eval.jsonl (held-out, another seed; answers 'yes'/'no'/'true'/'false').
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from nanophi import dataprep, records  # noqa: E402
from nanophi import gen_logic  # noqa: E402
from nanophi import textformat  # noqa: E402
from nanophi.records import Schema, Source, need  # noqa: E402

num_generated = 20000
eval_seed = 434343
n_eval = 200


SCHEMAS = [
    # Open-Platypus rows are routed by data_source: MATH/PRM800K go to math, leetcode to code (records.PLATYPUS_ROUTES)
    Schema("garage-bAInd/Open-Platypus", ["instruction", "output"], lambda r: records.platypus("logic", r),
           hub=records.OPEN_PLATYPUS),
    Schema("qa", ["question", "answer"], lambda r: [textformat.qa("logic", need(r, "question"), need(r, "answer"))]),
    Schema("text", ["text"], lambda r: [textformat.plain("logic", need(r, "text"))]),
]


def generated(r):
    return [textformat.qa("logic", r["question"], r["answer"])]


def offline(cfg):
    return [Source("logic-generator", lambda: gen_logic.logic_items(cfg.num_generated, cfg.seed),
                   Schema("generated", [], generated))]


def eval_items(cfg):
    return dataprep.unique_items(gen_logic.logic_items(10 ** 9, cfg.eval_seed), cfg.n_eval)


def main(argv=None):
    return dataprep.run("logic", SCHEMAS, offline, argv, eval_items=eval_items,
                        meta_extra={"loss": "answer only",
                                    "eval": {"answer_format": gen_logic.LOGIC_ANSWER_FORMAT,
                                             "prompt": "textformat.qa('logic', question) -> '[Logic] <question>\\nAnswer:'"}},
                        near_dedup=False, num_generated=num_generated, eval_seed=eval_seed, n_eval=n_eval)


if __name__ == "__main__":
    dataprep.cli(main)
