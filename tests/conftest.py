import os

import pytest

import sparse_dqn as sd


@pytest.fixture
def cpp_kernels():
    """The C++ kernels; a test that needs them skips where they are not built, and fails under CI,
    which always builds them."""
    if sd._kernels() is None:
        assert not os.environ.get("CI"), "the C++ kernels did not build under CI"
        pytest.skip("the C++ kernels are not built on this machine")
    return sd._kernels()
