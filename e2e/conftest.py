import os
import tempfile

# Hermetic like tests/: no user data cache, no network; torch.compile's cache of its own.
os.environ.setdefault("ROBUSTGRID_DATA", "/nonexistent-robustgrid-data")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "robustgrid-e2e-inductor"))
