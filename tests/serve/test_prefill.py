"""Requests that join the decode batch together are prefilled together: a request whose prompt prefix (system line
and video) is already computed, earlier or in the same round, runs only its own text; each still gets exactly the
answer `Generator.generate` gives for its video and question, greedy or sampled with its seed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tlv_jax.data.templates import eval_prompt_ids
from tlv_jax.generate import Generator
from tlv_jax.serve.engine import Delta, Engine, Finished, Job
from tlv_jax.serve.metrics import Metrics
from tlv_jax.serve.prefill import PREFILL_ROWS, groups
from tlv_jax.serve.protocol import Media
from tlv_jax.serve.video_cache import VideoEncoder

NEW = 6


@pytest.fixture(scope="module")
def gen(model_dir) -> Generator:
    return Generator.from_pretrained(model_dir)


class Answer:
    """Collects one job's streamed text until it finishes."""

    def __init__(self):
        self.text, self.done = "", threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Delta):
            self.text += event.text
        else:
            assert isinstance(event, Finished), event
            self.done.set()


def test_requests_arriving_together_are_prefilled_in_one_batch_with_generates_answers(gen, media_root):
    metrics = Metrics(4)
    engine = Engine(gen, metrics, max_batch=4, max_queue=8)
    encoder = VideoEncoder(gen, metrics, media_root)
    videos = {name: encoder.encode_now(Media(video_url=(media_root / name).as_uri())) for name in ("a.mp4", "b.mp4")}
    asked = [("a.mp4", "What is happening?", {}), ("b.mp4", "What is happening?", {}),
             ("a.mp4", "Describe the colours.", {}), ("a.mp4", "Is anyone there?", {"temperature": 0.8, "seed": 7})]

    def job(name: str, question: str, options: dict) -> tuple[Job, Answer]:
        ids = eval_prompt_ids(question, gen.tokenizer, gen.template).input_ids.astype(np.int32)
        prompt, limit = engine.budget(ids, videos[name], NEW)
        answer = Answer()
        engine.enter_queue()
        return Job(ids, videos[name], prompt, limit, answer, **options), answer

    jobs = [job(*a) for a in asked]
    for j, _ in jobs:  # all waiting before the scheduler starts: they join in one round
        engine.submit(j)
    engine.start()
    try:
        for _, answer in jobs:
            assert answer.done.wait(120)
        rows = metrics.registry.get_sample_value
        # a.mp4 and b.mp4 prefilled whole in one call; a's other two questions extend a's prefix in one call.
        assert rows("tlv_prefill_rows_count") == 2 and rows("tlv_prefill_rows_sum") == 4
        assert rows("tlv_prefix_cache_hits_total") == 2
        later = job("a.mp4", "What happens at the end?", {})  # a follow-up: the prefix comes from the cache
        engine.submit(later[0])
        assert later[1].done.wait(120)
        assert rows("tlv_prefix_cache_hits_total") == 3
    finally:
        engine.stop()
        encoder.close()
    for (name, question, options), (_, answer) in zip(asked + [("a.mp4", "What happens at the end?", {})],
                                                       jobs + [later]):
        expected = gen.generate(str(media_root / name), question, max_new_tokens=NEW, **options)
        assert answer.text == expected, (name, question)


def test_groups_split_each_shape_into_calls_of_the_row_counts():
    items = [("x", i) for i in range(7)] + [("y", 0)]
    calls = list(groups(items, lambda item: item[0]))
    assert [len(c) for c in calls] == [4, 2, 1, 1] and all(len(c) in PREFILL_ROWS for c in calls)
    assert [item for c in calls for item in c] == items


def test_each_slot_gets_its_own_first_token_when_prompt_shapes_interleave():
    """Joining requests are grouped by padded shape, so calls run in another order than the requests came: the
    first tokens must still go to their own slots."""
    import collections
    import types

    from tlv_jax.serve.prefill import Joining, Prefiller
    from tlv_jax.serve.video_cache import Encoded

    prefiller = Prefiller.__new__(Prefiller)  # the grouping and bookkeeping only: no model runs
    prefiller.metrics, prefiller.capacity, prefiller.context = Metrics(4), 0, 4096
    prefiller.prefixes = collections.OrderedDict()
    cfg = types.SimpleNamespace(image_token_index=-200)
    prefiller.gen = types.SimpleNamespace(model=types.SimpleNamespace(cfg=cfg))
    prefiller._whole = lambda cache, rows, sampling: (cache, np.array([100 + j.slot for j in rows]))
    video = Encoded(np.zeros((1, 4, 8), np.float32), None, 4)
    lengths = {0: 10, 1: 300, 2: 20, 3: 310}  # slots 0 and 2 pad to 64 tokens, 1 and 3 to 512
    joining = [Joining(slot, np.ones(n, np.int32), video) for slot, n in lengths.items()]
    none = np.zeros(4)
    _, firsts = prefiller.prefill(None, joining, none, none, none)
    assert firsts == {slot: 100 + slot for slot in lengths}
