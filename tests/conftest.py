import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The tests run tiny models op by op, where a second intra-op thread only adds hand-off cost (hundreds of
# times the op itself on a busy 2-core machine). Child processes the tests start inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
