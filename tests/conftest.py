import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

# Test models are tiny: one thread avoids OpenMP overhead that costs 30-50x on 2 busy cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bundled_pipe():
    """The bundled model, loaded once per test session (read-only: do not leave hooks on it)."""
    from ditaccel.pipeline import load_pipeline

    return load_pipeline()


@pytest.fixture(scope="session", autouse=True)
def _latency_cache(tmp_path_factory):
    """Latency profiles (the search's default cost) go to a session temp folder, never ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DITACCEL_LATENCY_CACHE", str(tmp_path_factory.mktemp("latency")))
        yield
