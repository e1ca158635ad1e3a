"""`SupervisedMaker` makes examples in a child process: a video that kills the child (a segfault) or never finishes
decoding costs only its entry, as a `decode_error`, and the next entry gets a fresh child; a bug or a child that
cannot start is raised, never counted as bad data."""

import json
import os
import signal
import time

import numpy as np
import pytest

from tlv_jax.data.prepared_example import ExampleMaker, PrepareConfig
from tlv_jax.data.supervised_maker import SupervisedMaker
from tlv_jax.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def config(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("supervised")
    annotation = generate_dataset(root, 4, seed=2, frames=8, size=32, fps=8)
    return PrepareConfig(annotation_file=str(annotation), video_dir=str(root), num_frames=4, image_size=28,
                         tokenizer_dir=str(fixtures_dir / "qwen2-group-f16" / "finetune"))


class _HangsDiesOrFails(ExampleMaker):
    """Entry 1: a decoder that never returns; 2: one that segfaults; 4: a bug (not about any video)."""

    def __call__(self, index, record):
        if index == 1:
            time.sleep(3600)
        if index == 2:
            os.kill(os.getpid(), signal.SIGSEGV)
        if index == 4:
            raise KeyError("a bug")
        return super().__call__(index, record)


def test_a_video_that_kills_or_hangs_the_child_costs_only_its_entry(config):
    records = json.loads(open(config.annotation_file).read())
    maker = SupervisedMaker(config, _HangsDiesOrFails, timeout_s=5)
    try:
        made = [maker(i, r) for i, r in enumerate(records)]
        with pytest.raises(RuntimeError, match=r"(?s)entry 4 failed in the worker process.*KeyError: 'a bug'"):
            maker(4, records[0])
        assert maker(3, records[3])["id"] == records[3]["id"]  # the child that raised still serves
    finally:
        assert maker.close() == 0  # an idle child ends on its own
    assert made[1]["bad"] == ("decode_error", records[1]["id"], f"decoding {records[1]['video']!r} took over 5 s "
                                                                  "(stopped)")
    assert made[2]["bad"] == ("decode_error", records[2]["id"], "the worker process died (exit code -11) on this "
                                                                  f"entry's video {records[2]['video']!r}")
    expected = ExampleMaker(config)
    for i in (0, 3):  # the same example as in this process
        want = expected(i, records[i])
        assert made[i]["id"] == want["id"] and made[i]["frames"] == want["frames"]
        np.testing.assert_array_equal(made[i]["input_ids"], want["input_ids"])


def test_a_child_that_cannot_start_is_an_error(config, tmp_path):
    broken = PrepareConfig(**{**vars(config), "tokenizer_dir": str(tmp_path / "no_tokenizer")})
    with pytest.raises(RuntimeError, match=r"(?s)worker process did not start.*no_tokenizer"):
        SupervisedMaker(broken)
