"""
GPT-2's BPE tokenizer, the one definition every script uses.

get_tokenizer() returns a tiktoken Encoding identical to tiktoken.get_encoding("gpt2").
Offline (this machine, CI) it is built from a local GPT-2 ranks file: openai-whisper's
source distribution on PyPI ships one (whisper/assets/gpt2.tiktoken). `python -m nanophi.tokenizer
--setup` fetches that one file with pip into the cache directory; it is never committed.
"""
import functools
import os
import subprocess
import sys
import tarfile
import tempfile

from nanophi.files import atomic_file, write_text_atomic

EOT_ID = 50256          # <|endoftext|>, GPT-2's only special token: ends every example
VOCAB_SIZE = 50257      # real GPT-2 vocabulary (models may pad the embedding to 50304)
EOT_TEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer split pattern (same as tiktoken's gpt2 encoding)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

CACHE_DIR = os.environ.get("NANOPHI_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nanophi"))
RANKS_FILE = os.environ.get("NANOPHI_GPT2_RANKS", os.path.join(CACHE_DIR, "gpt2.tiktoken"))


def _from_ranks_file(path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(path)
    if len(ranks) != EOT_ID:
        raise ValueError(f"{path}: expected {EOT_ID} GPT-2 ranks, found {len(ranks)}; the file is not GPT-2's")
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: EOT_ID})


@functools.lru_cache(maxsize=None)
def get_tokenizer():
    """GPT-2's Encoding: from the local ranks file if present, else tiktoken's download."""
    if os.path.exists(RANKS_FILE):
        return _from_ranks_file(RANKS_FILE)
    try:
        import tiktoken
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network, no tiktoken cache
        raise RuntimeError(
            f"GPT-2 tokenizer not available: no ranks file at {RANKS_FILE} and "
            f"tiktoken.get_encoding('gpt2') failed ({type(e).__name__}: {e}).\n"
            f"Fix: run `python -m nanophi.tokenizer --setup` (fetches whisper/assets/gpt2.tiktoken from the "
            f"openai-whisper sdist on PyPI), or set NANOPHI_GPT2_RANKS to a GPT-2 .tiktoken file.") from None


def encode(text):
    """Plain text to ids; special-token text is treated as ordinary text (never a stray 50256)."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids):
    return get_tokenizer().decode([int(i) for i in ids])


def setup(dest=RANKS_FILE):
    """Fetch gpt2.tiktoken from openai-whisper's sdist on PyPI (pip only, no other host)."""
    if os.path.exists(dest):
        print(f"tokenizer: {dest} already present")
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, "openai-whisper==20250625"], check=True)
        sdist = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")][0]
        with tarfile.open(os.path.join(tmp, sdist)) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
            data = tar.extractfile(member).read()
    with atomic_file(dest) as tmp_dest:
        with open(tmp_dest, "wb") as f:
            f.write(data)
        _from_ranks_file(tmp_dest)  # validate before it takes the real name
    print(f"tokenizer: wrote {dest} ({len(data):,} bytes)")
    return dest


def _bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode map used by vocab.json/merges.txt."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _split_in_two(ranks, token):
    """Replay BPE on a token using only merges ranked below it: the last merge made it."""
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def save_hf_tokenizer(path, model_max_length=1024, chat_template=None):
    """Write vocab.json and merges.txt (transformers' GPT2Tokenizer files) derived from the ranks, so
    an exported model directory is complete for transformers, vLLM and llama.cpp's converter.
    model_max_length: the model's block_size; chat_template: Jinja text (textformat.chat_template())."""
    import json
    enc = get_tokenizer()
    ranks = {enc.decode_single_token_bytes(i): i for i in range(EOT_ID)}
    byte_map = _bytes_to_unicode()
    to_text = lambda b: "".join(byte_map[x] for x in b)
    vocab = {to_text(tok): rank for tok, rank in ranks.items()}
    vocab[EOT_TEXT] = EOT_ID
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = _split_in_two(ranks, tok)
        if len(parts) != 2:
            raise ValueError(f"token {tok!r} (rank {rank}) is not one merge of two tokens")
        merges.append(f"{to_text(parts[0])} {to_text(parts[1])}")
    os.makedirs(path, exist_ok=True)
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": int(model_max_length),
              "bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "add_prefix_space": False}
    if chat_template:
        config["chat_template"] = chat_template
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps({"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}),
    }
    for name, text in files.items():
        write_text_atomic(os.path.join(path, name), text)
    return path


if __name__ == "__main__":
    if "--setup" in sys.argv:
        setup()
    enc = get_tokenizer()
    print("Hello world ->", enc.encode_ordinary("Hello world"), f"(eot={EOT_ID}, n_vocab={enc.n_vocab})")
