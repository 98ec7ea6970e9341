# The main job's finetune, shaped like config/finetune_nanophi.py: start from a pretrained model in a
# transformers directory (init_from=<dir>, as gpt2-medium is loaded) and finetune it on the whole
# task mix. The base is the stand-in pretrained by config/nanophi_cpu_base.py and exported by
# export.py; pipeline.py runs all three.
# python train.py config/nanophi_cpu.py
out_dir = "out-nanophi-cpu"
init_from = "out-nanophi-cpu-base/hf"
# weighted toward what a small model can visibly learn in minutes (answer formats, logic, stopping
# after a chat reply); textbooks and code were the base's pretraining text
tasks = {"textbook": 0.5, "code": 0.5, "math": 2.0, "logic": 2.0, "roleplay": 1.0, "chat": 1.5, "excerpt": 0.5,
         "symposium": 0.5}
block_size = 256
dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 250  # ~0.8 s/iteration on 2 idle cores (fp32): about 3.5 minutes
eval_interval = 100
eval_iters = 1  # fixed batches of 8 x 256 tokens per task and split
always_save_checkpoint = False  # ckpt.pt/best.pt when val improves, ckpt.pt at the end (as on Colab)
learning_rate = 1e-3  # lower than the base's 2e-3: finetuning, not training from scratch
min_lr = 1e-4
warmup_iters = 10
weight_decay = 0.1
device = "auto"  # the CPU here; a GPU if there is one
dtype = "auto"
compile = None  # on with CUDA on Linux; eager on CPU at 500 iterations (compiled from device.CPU_COMPILE_MIN_ITERS)
log_interval = 10
