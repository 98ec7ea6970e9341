# The main job's finetune, shaped like config/finetune_nanophi.py: start from a pretrained model in a
# transformers directory (init_from=<dir>, as gpt2-medium is loaded) and finetune it on the whole
# task mix. The base is the stand-in pretrained by config/nanophi_cpu_base.py and exported by
# export.py; config/nanophi_cpu_chain.py then finishes this run into out-nanophi-cpu. pipeline.py
# runs all four.
# python train.py config/nanophi_cpu.py
out_dir = "out-nanophi-cpu-mix"
init_from = "out-nanophi-cpu-base/hf"
# mostly math: the showcase's doubling and running +k families are learnt here, the noun chains mostly
# in the finish. The other tasks keep a little weight: every format is seen
tasks = {"textbook": 0.1, "code": 0.1, "math": 7.5, "logic": 0.5, "chain": 2.0, "roleplay": 0.2, "chat": 0.5,
         "excerpt": 0.1, "symposium": 0.1}
# only the embedding rows of tokens in this data train: AdamW moves every other row too, all one way.
# One run each, held out doubling/running/chain: seen 12/20/0 here, all 16/19/0; but with all and no
# chains here the finish started from chain val 8.1 and ended 0/20; with seen and chains, 14/20
train_embeddings = "seen"
block_size = 128
dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
# 900 x 1,024 tokens x 20.5 MFLOP = 19 TFLOP. Measured on a fresh clone, idle, 2 threads, 2-core AMD EPYC with
# AVX2 only (fp32): 0.18-0.29 s/iteration (p10-p90), 232 s in all
max_iters = 900
eval_interval = 300
eval_iters = 1  # fixed batches of 8 x 128 tokens per task and split
always_save_checkpoint = False  # ckpt.pt/best.pt when val improves, ckpt.pt at the end (as on Colab)
learning_rate = 5e-3  # high for a tiny model and few steps: running +k 5/20 held out at 5e-3, 4/20 at 3e-3 (128 wide)
min_lr = 5e-4
warmup_iters = 10
weight_decay = 0.1
device = "auto"  # the CPU here; a GPU if there is one
dtype = "auto"
compile = None  # on with CUDA on Linux; eager on CPU at 500 iterations (compiled from device.CPU_COMPILE_MIN_ITERS)
log_interval = 10
