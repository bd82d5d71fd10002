import os
import sys

import torch

# Tiny models: one intra-op thread is faster than two, and steadier under load.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))
