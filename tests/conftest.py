"""Shared test settings. Each tests/<area>/ folder has its own conftest for its fixtures."""

import os
import sys

# Small models on 2 cores: more threads than cores only adds contention between test processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# DeepSpeed's JIT ops in this venv, as `make test` builds them (Makefile, TORCH_EXTENSIONS_DIR).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch-extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
