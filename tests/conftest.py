"""Test set-up: 8 fake CPU devices (set before JAX initialises) and absl flags marked parsed for Grain workers."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# Helper modules are also imported by their place under tests/ (`from train import tiny_run`); appended, so that
# site-packages wins for names it has too (`evaluate` is a Hugging Face package).
sys.path.append(str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "upstream"  # copied from ../shared/fixtures


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The fixtures made by the original PyTorch code (tests/fixtures/upstream)."""
    return FIXTURES
