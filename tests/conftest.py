import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

# One thread: on a shared 2-core machine PyTorch's default of 2 threads can be far slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled digits, scaled to [0, 1]."""
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@pytest.fixture
def small_X():
    return np.random.default_rng(0).normal(size=(60, 5))
