"""Shared test fixtures: tiny random GPT-2 checkpoints built and saved by the tests themselves."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(2)


def make_hf_dir(path, n_layer=2, n_head=2, n_embd=64, n_positions=128, seed=0):
    """A randomly initialised transformers GPT-2 checkpoint (config.json + safetensors) at path."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=50257)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(path, safe_serialization=True)
    return path


def split_texts(out_dir, task):
    """All prepared documents of a task, both splits, as (text, trained text)."""
    from nanophi.datafiles import TaskSplit
    from nanophi.tokenizer import decode
    rows = []
    for split in ("train", "val"):
        s = TaskSplit(str(out_dir), task, split)
        for i in range(s.n_docs):
            ids, mask = s.document(i)
            rows.append((decode(ids), decode(ids[mask == 1])))
    return rows


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A tiny GPT-2 (2 layers, 64 wide) in transformers' format, shared by the whole session."""
    return make_hf_dir(str(tmp_path_factory.mktemp("tiny_hf")))


@pytest.fixture(scope="session")
def tiny_out_dir(tmp_path_factory):
    """An out_dir holding a random tiny NanoPhi checkpoint (ckpt.pt and best.pt), as train.py writes."""
    from dataclasses import asdict
    from nanophi.checkpoint import BEST, LATEST, save_checkpoint
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg)
    out = str(tmp_path_factory.mktemp("tiny_out"))
    state = {"model": model.state_dict(), "model_args": asdict(cfg), "iter_num": 0, "best_val_loss": 1e9}
    save_checkpoint(os.path.join(out, LATEST), state)
    save_checkpoint(os.path.join(out, BEST), state)
    return out


@pytest.fixture(scope="session")
def tiny_out_dir_1k(tmp_path_factory):
    """A tiny random NanoPhi checkpoint with a 1024-token context: long enough for judge and generator prompts."""
    from dataclasses import asdict
    from nanophi.checkpoint import BEST, save_checkpoint
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=1024, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)
    out = str(tmp_path_factory.mktemp("tiny_out_1k"))
    save_checkpoint(os.path.join(out, BEST), {"model": GPT(cfg).state_dict(), "model_args": asdict(cfg),
                                              "iter_num": 0, "best_val_loss": 1e9})
    return out
