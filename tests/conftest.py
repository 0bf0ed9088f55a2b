import os

import pytest

import sparse_dqn as sd
from engine import backends


def skip_unless_installed(missing: str, how: str):
    """Skip a test whose tool is missing here: a machine with only Python, pip, make, git and a
    C++ compiler passes `make test`. Under CI a missing tool fails the test, except in .ci/run's
    first pass, which hides the tools on purpose (SPARSE_DQN_BARE)."""
    if missing:
        assert not os.environ.get("CI") or os.environ.get("SPARSE_DQN_BARE"), f"{missing} is required under CI"
        pytest.skip(f"{missing} is not installed here: {how}")


@pytest.fixture
def cpp_kernels():
    """The C++ kernels; a test that needs them skips where they are not built, and fails under CI,
    which always builds them."""
    if backends._kernels() is None:
        assert not os.environ.get("CI"), "the C++ kernels did not build under CI"
        pytest.skip("the C++ kernels are not built on this machine")
    return backends._kernels()
