import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

from model import GPT, GPTConfig
from nanophi.hf_export import MARKER, export_hf, hf_config
from nanophi.tokenizer import EOT_ID, get_tokenizer

# What llama.cpp's convert_hf_to_gguf.py reads for GPT-2 (its GPT2Model class, registered for the
# architecture "GPT2LMHeadModel", and the base TextModel/SpecialVocab it builds on):
CONVERTER_CONFIG_KEYS = {
    "architectures": list,       # picks the model class: architectures[0] == "GPT2LMHeadModel"
    "n_layer": int,              # block count
    "n_ctx": int,                # context length (KeyError without it: n_positions is not read)
    "n_embd": int,               # embedding length; feed-forward length is 4 * n_embd
    "n_head": int,
    "layer_norm_epsilon": float,
    "vocab_size": int,           # the vocabulary it writes, padded with unused ids if the tokenizer has fewer
    "bos_token_id": int,         # SpecialVocab falls back to config.json's ids
    "eos_token_id": int,
}
# the tokenizer it loads with AutoTokenizer.from_pretrained (BPE "gpt2" pre-tokenizer) and the
# chat template SpecialVocab reads from tokenizer_config.json
CONVERTER_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
# the keys of the official openai-community/gpt2 config.json that describe the model
OFFICIAL_GPT2_KEYS = {"activation_function", "architectures", "attn_pdrop", "bos_token_id", "embd_pdrop",
                      "eos_token_id", "initializer_range", "layer_norm_epsilon", "model_type", "n_ctx", "n_embd",
                      "n_head", "n_layer", "n_positions", "resid_pdrop", "vocab_size"}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)  # padded vocab
    return GPT(cfg).eval()


def test_export_round_trip(tiny, tmp_path):
    path = export_hf(tiny, str(tmp_path / "export"))
    hf = GPT2LMHeadModel.from_pretrained(path).eval()
    back = GPT.from_pretrained(path).eval()
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        want, _ = tiny(x)
        assert (hf(x).logits - want[..., :50257]).abs().max() < 1e-5
        assert (back(x)[0] - want[..., :50257]).abs().max() < 1e-5
    assert os.listdir(tmp_path) == ["export"]  # no temporary directory left
    (tmp_path / "export" / "model.safetensors").write_bytes(b"stale")
    export_hf(tiny, path)  # over an existing export: replaced whole
    assert sorted(os.listdir(path)) == sorted(["config.json", "generation_config.json", "model.safetensors",
                                               "vocab.json", "merges.txt", "tokenizer_config.json",
                                               "special_tokens_map.json", MARKER])
    assert GPT2LMHeadModel.from_pretrained(path).config.n_positions == 64


def test_export_carries_what_llama_cpp_converter_and_transformers_read(tiny, tmp_path):
    path = export_hf(tiny, str(tmp_path / "export"))
    config = json.load(open(os.path.join(path, "config.json")))
    for key, kind in CONVERTER_CONFIG_KEYS.items():
        assert isinstance(config.get(key), kind), f"config.json lacks {key} (llama.cpp's converter reads it)"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_ctx"] == config["n_positions"] == 64
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (2, 2, 32)
    assert config["n_inner"] in (None, 4 * 32)  # the converter assumes 4 * n_embd
    assert config["bos_token_id"] == config["eos_token_id"] == EOT_ID
    assert OFFICIAL_GPT2_KEYS <= set(config), OFFICIAL_GPT2_KEYS - set(config)
    assert all(os.path.isfile(os.path.join(path, f)) for f in CONVERTER_TOKENIZER_FILES)
    tok = AutoTokenizer.from_pretrained(path)  # as the converter loads it
    assert len(tok.get_vocab()) == config["vocab_size"] == 50257
    assert tok.convert_ids_to_tokens(EOT_ID) == "<|endoftext|>"
    assert "[Bot]:" in json.load(open(os.path.join(path, "tokenizer_config.json")))["chat_template"]
    text = "Hello world [Math] 6+6=12\n\tdef f(x):  return 'naïve' 🙂"
    assert tok.encode(text) == get_tokenizer().encode_ordinary(text)
    assert AutoConfig.from_pretrained(path).model_type == "gpt2"


def test_config_for_gpt2_shapes_writes_defaults_too(tmp_path):
    # 124M's n_embd/n_layer/n_head equal GPT2Config's defaults; a diff-only config.json would drop them
    for c in (GPTConfig(), GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=4096)):
        path = tmp_path / f"{c.n_layer}.json"
        hf_config(c).to_json_file(str(path), use_diff=False)
        config = json.load(open(path))
        assert OFFICIAL_GPT2_KEYS | set(CONVERTER_CONFIG_KEYS) <= set(config)
        assert (config["n_layer"], config["n_embd"], config["n_ctx"]) == (c.n_layer, c.n_embd, c.block_size)


def test_bias_free_model_is_refused():
    with pytest.raises(ValueError, match="bias=False"):
        hf_config(GPTConfig(bias=False))
