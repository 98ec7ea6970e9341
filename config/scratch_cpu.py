# A small GPT-2-shaped model trained from scratch (random weights, GPT-2's tokenizer) on the whole
# task mixture, into its own folder: a first run on 2 CPU cores that touches nothing the main job made.
# python train.py config/scratch_cpu.py
out_dir = "out-scratch-cpu"
init_from = "scratch"
tasks = {"textbook": 1.0, "code": 1.0, "math": 1.0, "logic": 1.0, "roleplay": 0.5, "chat": 1.0, "excerpt": 0.5,
         "symposium": 0.5}
n_layer = 4
n_head = 4
n_embd = 256
block_size = 256
dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 300
# measured on a 2-core Xeon (dtype=auto chose bf16), never idle: other engineers' jobs shared the cores.
# The logged iterations took 0.40-0.58 s while the cores were free of them (300 x 0.5 s: ~3 minutes
# idle, not measured whole) and 2.7-6.3 s while shared; the whole 300-iteration run took 773 s under
# that load (load average 2-4), val loss all 10.77 -> 4.92
eval_interval = 100
eval_iters = 1
always_save_checkpoint = False
learning_rate = 2e-3  # a small model from random weights takes a high rate
min_lr = 2e-4
warmup_iters = 15
weight_decay = 0.1
device = "auto"
dtype = "auto"
compile = None  # eager on CPU below 1000 iterations (device.CPU_COMPILE_MIN_ITERS)
log_interval = 10
