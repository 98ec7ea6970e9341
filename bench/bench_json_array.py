"""
Peak memory of reading a MetaMathQA-shaped JSON array (the hub's MetaMathQA-395K.json is one 396 MB
array): parsed whole with json.load, against records.read_hub's stream (ijson, one item at a time).
Each reader runs in its own process; the table gives each one's peak resident memory.

    python bench/bench_json_array.py --mb=100
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402

mb = 100          # size of the array file to write and read
keep = False      # keep the file (in the temp dir) afterwards
configure(globals())

READERS = {  # the stream first: getrusage gives the largest child so far
    "records.read_hub (ijson stream)": (
        "import sys; sys.path.insert(0, sys.argv[2]); from nanophi import dataprep; "
        "hub = records.Hub('meta-math/MetaMathQA', 'MetaMathQA-395K.json', 'json_array'); "
        "print(sum(1 for _ in records.read_hub(hub, sys.argv[3])))"),
    "json.load (whole array)": "import json,sys; rows=json.load(open(sys.argv[1])); print(len(rows))",
}


def write_array(path, target_bytes):
    row = {"query": "Tom has 3 apples and buys 4 more bags of 6 apples each. How many apples does he have now?",
           "response": "He buys 4 * 6 = 24 apples. 3 + 24 = 27. The answer is: 27", "type": "GSM_Rephrased",
           "original_question": "Tom has 3 apples and buys 4 bags of 6 apples. How many apples does he have?"}
    one = json.dumps(row, indent=4)
    n = max(1, target_bytes // (len(one) + 6))
    with open(path, "w") as f:  # pretty-printed like the hub file
        f.write("[\n")
        for i in range(n):
            f.write(("    " + one.replace("\n", "\n    ")) + (",\n" if i < n - 1 else "\n"))
        f.write("]\n")
    return n


root = tempfile.mkdtemp()
path = os.path.join(root, "meta-math", "MetaMathQA", "MetaMathQA-395K.json")
os.makedirs(os.path.dirname(path))
n = write_array(path, mb * 1_000_000)
size = os.path.getsize(path)
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
print(f"file: {size / 1e6:.0f} MB, {n:,} records (MetaMathQA-shaped); each reader in its own process, one at a time\n")
print("| reader | records | peak RSS | s |\n|---|---:|---:|---:|")
for name, code in READERS.items():
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-c", code, path, repo, root], capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
    if r.returncode:
        sys.exit(r.stderr)
    note = "" if peak > before else " (<= the row above)"
    print(f"| {name} | {int(r.stdout.strip()):,} | {peak / 1024:,.0f} MiB{note} | {time.time() - t0:.1f} |")
if not keep:
    os.remove(path)
