import os
import sys

# tests import the independent references in tests/naive.py by name
sys.path.insert(0, os.path.dirname(__file__))

# Under pytest-xdist (``-n 2``) each worker and the commands it starts use one torch/OpenMP
# thread: two workers of two threads each would oversubscribe 2 cores, and OpenMP's spinning
# threads slow both down.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_configure(config):
    """The known third-party noise of trime's commands (trime.quiet), filtered in the tests as
    pytest.ini's filters are (pytest would show DeprecationWarnings despite the process's own
    filters), so the warnings summary keeps what matters."""
    from trime.quiet import KNOWN_WARNINGS

    for category, message in KNOWN_WARNINGS:
        assert ":" not in message, "pytest's filter syntax splits at ':'"
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")
