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


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A tiny GPT-2 (2 layers, 64 wide) in transformers' format, shared by the whole session."""
    return make_hf_dir(str(tmp_path_factory.mktemp("tiny_hf")))
