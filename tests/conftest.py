import os
import tempfile

import pytest
import torch

# Hermetic: no test may touch the user's data cache or the network.
os.environ.setdefault("ROBUSTGRID_DATA", "/nonexistent-robustgrid-data")
# torch.compile's kernel cache, one per CPU capability: a suite under ATEN_CPU_CAPABILITY=default, run while
# another ran natively, met vectorized kernel source in the shared /tmp/torchinductor_<user> and failed to
# build it ('at::vec has not been declared'); alone, with its own cache, it passes.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"robustgrid-tests-inductor-{os.environ.get('ATEN_CPU_CAPABILITY') or 'native'}"))
# 2 threads, the CI machine's cores; ROBUSTGRID_TEST_THREADS=1 checks that no verdict depends on it
torch.set_num_threads(int(os.environ.get("ROBUSTGRID_TEST_THREADS", "2")))


@pytest.fixture
def tiny_model():
    from robustgrid.models import create_model
    torch.manual_seed(0)
    return create_model("simple_cnn").eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 32, 32, generator=g)
    x[12:] = torch.nn.functional.avg_pool2d(x[12:], 3, 1, 1)  # smooth half: natural-ish statistics
    return torch.round(x * 255) / 255


@pytest.fixture
def kill_once():
    """kill_once(cmd, ready, timeout_s, env=None): start `cmd` in a session of its own, SIGKILL its whole group the
    moment ready() holds (asserting it was still running then, so the kill lands mid-run), and reap it."""
    import signal
    import subprocess
    import time

    def run(cmd: list[str], ready, timeout_s: float, env: dict | None = None) -> None:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env=env)
        try:
            deadline = time.time() + timeout_s
            while time.time() < deadline and proc.poll() is None and not ready():
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed mid-evaluation"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return run
