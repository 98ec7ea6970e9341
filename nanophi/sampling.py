"""
Sampling: the next id from a row's logits (greedy, temperature, top-k, top-p, repetition controls),
and the one rule for a context longer than the model's. Used by the engine and by model.generate.
"""
import torch
from torch.nn import functional as F

GPT2_VOCAB = 50257  # real token ids; rows above it (nanoGPT pads to 50304) are never sampled
GREEDY_BELOW = 1e-5  # temperatures below this are greedy: logits / 1e-45 overflow to inf and NaN


def fit_context(ids, block_size, room=1):
    """The ids a model of block_size positions reads before generating `room` more: all of them when
    they fit, else the last max(half a window, block_size - room), so a long generation restarts
    its window every half-window, not at every token."""
    if len(ids) + room <= block_size:
        return ids
    return ids[-max(block_size // 2, block_size - room):]


def sample_next(logits, seen, temperature, top_k=None, top_p=None, repetition_penalty=1.0,
                no_repeat_ngram_size=0, generator=None, stop=None):
    """logits (B, V) of the last position -> next ids (B,). seen (B, t) is the context. Stop ids
    are exempt from the repetition controls: a chat history full of <|endoftext|> must not
    make the model unable to end its reply. generator may be a list, one per row: each row's
    draw then depends on its own generator only (the engine batches rows of many requests)."""
    logits = logits.float()
    if logits.size(-1) > GPT2_VOCAB:
        logits[:, GPT2_VOCAB:] = -float("inf")
    keep = logits[:, stop].clone() if stop is not None and stop.numel() else None
    if repetition_penalty and repetition_penalty != 1.0:  # CTRL's penalty on tokens already seen
        prev = logits.gather(1, seen)
        logits.scatter_(1, seen, torch.where(prev > 0, prev / repetition_penalty, prev * repetition_penalty))
    n = no_repeat_ngram_size or 0
    if n > 0 and seen.size(1) >= n:  # ban tokens that would repeat an n-gram of the context
        for b in range(seen.size(0)):
            row = seen[b].tolist()
            prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
            banned = [row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == prefix]
            if banned:
                logits[b, banned] = -float("inf")
    if keep is not None:
        logits[:, stop] = keep
    if not temperature or temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest set reaching top_p
        sorted_logits[drop] = -float("inf")
        logits = torch.full_like(logits, -float("inf")).scatter(1, sorted_idx, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    if isinstance(generator, (list, tuple)):  # inverse CDF with one uniform from each row's generator
        u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generator])
        cdf = probs.cumsum(dim=-1)
        nxt = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        last = probs.size(-1) - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)  # rounding never picks p = 0
        return torch.minimum(nxt, last)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
