# The default main job: a small GPT-2-shaped model (GPT-2's tokenizer) trained from scratch on the
# offline task mix, on 2 CPU cores in a few minutes. Every task's validation loss falls visibly.
# python train.py config/nanophi_cpu.py
out_dir = "out-nanophi-cpu"
init_from = "scratch"
# weighted toward what a from-scratch model can visibly learn in minutes (answer formats, logic,
# stopping after a chat reply); textbooks and code are there but take far longer to learn
tasks = {"textbook": 0.5, "code": 0.5, "math": 2.0, "logic": 2.0, "roleplay": 1.0, "chat": 1.5, "excerpt": 0.5,
         "symposium": 0.5}
n_layer = 4
n_head = 4
n_embd = 256
block_size = 256
dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 500  # ~0.8 s/iteration on 2 idle cores (fp32): about 7 minutes
eval_interval = 100
eval_iters = 1  # fixed batches of 8 x 256 tokens per task and split
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 15
weight_decay = 0.1
device = "auto"  # the CPU here; a GPU if there is one
dtype = "auto"
compile = None  # on with CUDA on Linux; eager on CPU at 500 iterations (compiled from device.CPU_COMPILE_MIN_ITERS)
log_interval = 10
