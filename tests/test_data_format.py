"""Prepared documents are textformat's examples token for token, and the loss mask covers exactly the responses."""
import json
import os

import numpy as np

from nanophi import records
from nanophi import offline_sources
from nanophi import textformat
from nanophi.datafiles import TaskSplit
from nanophi.tokenizer import EOT_ID, decode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def load(task):
    return records.load_prepare(task)


def all_docs(out, task):
    docs = []
    for split in ("train", "val"):
        s = TaskSplit(str(out), task, split)
        assert s.tokens.dtype == np.uint16 and s.mask.dtype == np.uint8
        docs += [s.document(i) for i in range(s.n_docs)]
    return docs


def check_doc(ids, mask):
    assert ids[-1] == EOT_ID and mask[-1] == 1 and (ids[:-1] != EOT_ID).sum() == len(ids) - (ids == EOT_ID).sum()
    assert set(np.unique(mask)) <= {0, 1}


def test_qa_documents_match_inference_prompt(tmp_path):
    rows = [{"question": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(1, 30)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    load("math").main([f"--out_dir={tmp_path}", "--progress=False", f"--source={path}", "--n_eval=5", "--decontaminate=False"])
    docs = all_docs(tmp_path, "math")
    assert len(docs) == len(rows)
    for ids, mask in docs:
        check_doc(ids, mask)
        text = decode(ids)
        q = text[len("[Math] "):text.index("\nAnswer:")]
        a = next(r["answer"] for r in rows if r["question"] == q)
        prompt = textformat.encode_prompt(textformat.prompt_for("math", q))   # what sample.py/eval.py feed
        want_ids, want_mask = textformat.encode_example(textformat.qa("math", q, a))
        assert ids.tolist() == want_ids and mask.tolist() == want_mask
        assert ids[:len(prompt)].tolist() == prompt and not mask[:len(prompt)].any() and mask[len(prompt):].all()
        assert decode(ids[mask == 1]) == f" {a}<|endoftext|>"


def test_chat_masks_only_bot_turns_in_every_style(tmp_path):
    load("chat").main([f"--out_dir={tmp_path}", "--progress=False", f"--source={os.path.join(FIX, 'chat_handwritten.jsonl')}"])
    convs = [json.loads(l) for l in open(os.path.join(FIX, "chat_handwritten.jsonl"))]
    docs = all_docs(tmp_path, "chat")
    assert len(docs) == len(convs) * len(textformat.CHAT_STYLES)
    seen = set()
    for ids, mask in docs:
        check_doc(ids, mask)
        text = decode(ids)
        conv = next(c for c in convs if c["turns"][0]["content"] in text)
        style = next(s for s, m in textformat.CHAT_STYLES.items() if f"\n{m['user']} " in text)
        seen.add((conv["id"], style))
        want = textformat.encode_example(textformat.chat(conv["turns"], system=conv["system"], style=style))
        assert (ids.tolist(), mask.tolist()) == want
        replies = [t["content"] for t in conv["turns"] if t["role"] == "assistant"]
        assert decode(ids[mask == 1]) == "".join(f" {r}<|endoftext|>" for r in replies)
        assert int((ids == EOT_ID).sum()) == len(replies) and mask[ids == EOT_ID].all()
        # every bot turn starts right after a prompt that ends in the bot marker: the inference prompt
        for k, t in enumerate(conv["turns"]):
            if t["role"] == "assistant":
                prompt = textformat.encode_prompt(textformat.chat(conv["turns"][:k], system=conv["system"], style=style))
                assert ids[:len(prompt)].tolist() == prompt and mask[len(prompt)] == 1 and mask[len(prompt) - 1] == 0
    assert len(seen) == len(docs)


def test_roleplay_prompt_uses_names(tmp_path):
    load("roleplay").main([f"--out_dir={tmp_path}", "--progress=False", "--styles=['nanophi']",
                           f"--source={os.path.join(FIX, 'roleplay_handwritten.jsonl')}"])
    for ids, mask in all_docs(tmp_path, "roleplay"):
        check_doc(ids, mask)
        text = decode(ids)
        untrained = decode(ids[mask == 0])
        assert text.startswith("[Roleplay]\n[System]: ")
        assert untrained.endswith("Captain Mara:") or untrained.endswith("Old Tom:")


def test_code_exercise_and_excerpt_masks():
    parts = offline_sources.split_function('def add(a, b):\n    """Sum of a and b."""\n    c = a + b\n    return c\n')
    assert parts["prompt"] == 'def add(a, b):\n    """Sum of a and b."""' and parts["body"] == "    c = a + b\n    return c"
    ids, mask = map(np.array, textformat.encode_example(textformat.code_exercise(parts["prompt"], parts["body"])))
    assert decode(ids[mask == 1]) == "    c = a + b\n    return c<|endoftext|>"
    ids, mask = map(np.array, textformat.encode_example(textformat.code(parts["code"], parts["docstring"])))
    assert mask.all() and decode(ids) == '[Code] """Sum of a and b."""\ndef add(a, b):\n    c = a + b\n    return c<|endoftext|>'
    ids, mask = map(np.array, textformat.encode_example(textformat.excerpt("The sky is blue.\n\nWhat colour?", "Blue.")))
    prompt = textformat.encode_prompt(textformat.prompt_for("excerpt", "The sky is blue.\n\nWhat colour?"))
    assert ids[:len(prompt)].tolist() == prompt and decode(ids[mask == 1]) == " Blue.<|endoftext|>"


def test_only_last_reply_trained():
    segs = textformat.chat([("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")])
    ids, mask = map(np.array, textformat.encode_example(records.only_last_reply_trained(segs)))
    assert decode(ids[mask == 1]) == " d<|endoftext|>" and decode(ids).count("<|endoftext|>") == 2
