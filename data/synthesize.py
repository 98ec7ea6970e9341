"""
Generate synthetic textbooks or exercises through any OpenAI-compatible endpoint (docs/quality.md).

    python data/synthesize.py --kind=textbook --max_docs=50 --dry_run=True          # print the prompts
    python data/synthesize.py --kind=textbook --max_docs=50 --base_url=http://127.0.0.1:8000/v1 --model=nanophi
    python data/textbook/prepare.py --source=data/synth/textbooks.jsonl              # prepare them as a source
    python data/synthesize.py --kind=exercise --max_docs=50 ...
    python data/code/prepare.py --source=data/synth/exercises.jsonl --skip_bad=True  # replies with no function skipped

Prompts cross the seed lists in data/synth/seeds.json. Replies are appended to the output file as they
arrive (flushed and fsynced): rerun the same command after a crash, a kill or an endpoint failure and only
the missing ones are asked. The key comes from $OPENAI_API_KEY (api_key_env).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from configurator import ConfigError, configure, run_main  # noqa: E402
from nanophi import synth  # noqa: E402
from nanophi.records import DataError  # noqa: E402
from nanophi.llm import EndpointError, api_key_for, run_requests, usage_totals  # noqa: E402

# -----------------------------------------------------------------------------
kind = "textbook"           # textbook | exercise
max_docs = 50               # how many seed combinations to generate (0 = all of them)
out = ""                    # default data/synth/<kind>s.jsonl
seeds = synth.SEEDS
seed = 1337                 # order of the seed combinations
base_url = "http://127.0.0.1:8000/v1"
model = "nanophi"
api_key_env = ""            # "": $OPENAI_API_KEY, sent only to https://api.openai.com; NAME: send $NAME to base_url
concurrency = 4             # requests in flight
timeout = 300.0             # seconds per request
max_retries = 3             # the openai client's retries with backoff on 429/5xx/connection errors
max_tokens = 700
temperature = 0.8
price_in = 0.0              # cost per million prompt tokens (your endpoint's price)
price_out = 0.0             # cost per million completion tokens
dry_run = False             # print the prompts, call nothing
progress = True
# -----------------------------------------------------------------------------


def main(argv):
    global out
    configure(globals(), argv)
    out = out or os.path.join(synth.ROOT, "data", "synth", f"{kind}s.jsonl")
    if concurrency < 1 or max_docs < 0 or max_tokens < 1:
        raise ConfigError("concurrency and max_tokens must be >= 1, max_docs >= 0")
    requests = synth.build_requests(kind, synth.load_seeds(seeds), model, max_docs, max_tokens, temperature, seed)
    if dry_run:
        for r in requests:
            print(f"--- {r['key']} ---\n{r['messages'][0]['content']}")
        print(f"{len(requests)} prompts ({kind}); nothing sent (dry_run)")
        return
    try:
        done, stats = run_requests(requests, out, base_url, model, *api_key_for(base_url, api_key_env),
                                   concurrency, timeout, max_retries, max_tokens, temperature, progress)
    except EndpointError as e:
        n = sum(1 for _ in open(out, "rb")) if os.path.exists(out) else 0
        raise EndpointError(f"{e}\n{n} finished replies are kept in {out}; rerun the same command to resume") from None
    mine = [done[r["key"]] for r in requests if r["key"] in done]
    u = usage_totals(mine, price_in, price_out)
    rate = stats["completion_tokens"] / stats["wall"] if stats["wall"] else 0
    print(f"{kind}: {len(mine)}/{len(requests)} done ({stats['already_done']} from before, "
          f"{stats['written']} new, {stats['failed']} failed); tokens {u['prompt_tokens']:,} prompt + "
          f"{u['completion_tokens']:,} completion, cost {u['cost']:.4f}" + (f", {rate:,.1f} new completion tok/s" if rate else ""))
    if kind == "exercise":
        ok = sum(1 for r in mine if synth.parse_exercise(r["text"]))
        print(f"exercises with a parseable function (signature + docstring + body): {ok}/{len(mine)}")
    for err in stats["errors"]:
        print(f"  failed: {err}")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:], errors=[(DataError, 2), (EndpointError, 1)])
