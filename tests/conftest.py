import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The tests run tiny models op by op, where a second intra-op thread only adds hand-off cost (hundreds of
# times the op itself on a busy 2-core machine). Child processes the tests start inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def catalogue_world(tmp_path_factory):
    """The models and folders the error catalogue's cases act on (tests/catalogue.py); cases leave them unchanged."""
    from catalogue import make_world

    return make_world(tmp_path_factory)
