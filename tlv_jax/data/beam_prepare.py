"""The Apache Beam side of `python -m tlv_jax.data.prepare --beam`: TFDS's builder hands this transform's examples to
its own Beam writer (sharded ArrayRecord), so the same job runs on the local DirectRunner, Dataflow, Flink or Spark.

One element per annotation entry. The annotation file is read by one worker (it may sit in a bucket) and its entries
are reshuffled across all workers, which decode, sample, resize, encode and tokenise with the pool path's own
`ExampleMaker` (same records). Bad samples are counted by reason in Beam metrics (namespace `METRICS_NAMESPACE`,
live in the runner's UI); the first one of each reason (lowest index, as the pool path, which goes in order, finds
it) is combined into a small JSON file that the launcher reads to report exactly as the pool path does.

A worker crash on one video (a decoder segfault, an abort in FFmpeg, the OOM killer) would make the runner retry the
bundle and then fail the whole job: each worker therefore makes its examples in a child process it supervises
(`supervised_maker`), and a child that dies or hangs takes only its video with it (a `decode_error`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from tlv_jax.data.bad_samples import REASONS, BadSampleCounter
from tlv_jax.data.prepared_example import ExampleMaker, PrepareConfig
from tlv_jax.data.records import load_annotations
from tlv_jax.data.supervised_maker import MakerFactory, SupervisedMaker

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "tlv_jax.prepare"
GOOD = "good"
_BAD = "bad"


def pipeline_options(text: str, workers: int = 0) -> PipelineOptions:
    """`--beam_pipeline_options` ('key=value' pairs separated by commas, as `tfds build` takes them) as Beam options;
    empty: the DirectRunner in multi-processing mode with `workers` processes (0: one per CPU core)."""
    if not text:
        text = f"runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers={max(workers, 0)}"
    flags = [f"--{pair.strip().removeprefix('--')}" for pair in text.split(",") if pair.strip()]
    return PipelineOptions(flags)


def _entries(annotation_file: str) -> Iterator[tuple[int, Any]]:
    yield from enumerate(load_annotations(annotation_file))


class _MakeExamples(beam.DoFn):
    """(index, entry) -> (index, example) on the main output, (reason, (index, id, detail)) on `_BAD`."""

    def __init__(self, config: PrepareConfig, maker_factory: MakerFactory, timeout_s: float):
        self._config, self._maker_factory, self._timeout_s = config, maker_factory, timeout_s
        self._maker: Optional[SupervisedMaker] = None
        self._counters = {name: beam.metrics.Metrics.counter(METRICS_NAMESPACE, name) for name in (GOOD, *REASONS)}

    def setup(self) -> None:
        self._maker = SupervisedMaker(self._config, self._maker_factory, self._timeout_s)

    def teardown(self) -> None:
        if self._maker is not None:
            self._maker.close()

    def process(self, element: tuple[int, Any]) -> Iterator[Any]:
        index, record = element
        example = self._maker(index, record)
        if "bad" in example:
            reason, sid, detail = example["bad"]
            self._counters[reason].inc()
            log.warning("skipping sample %s (%s): %s", sid, reason, detail)
            yield beam.pvalue.TaggedOutput(_BAD, (reason, (index, sid, detail)))
        else:
            self._counters[GOOD].inc()
            yield index, example


def _write_first_bad(firsts: list[tuple[str, tuple[int, str, str]]], path: str) -> None:
    epath.Path(path).write_text(json.dumps({reason: [sid, detail] for reason, (_, sid, detail) in firsts}))


class PrepareExamples(beam.PTransform):
    """root -> (index, example) for every good entry of `config.annotation_file`; writes the first bad sample of each
    reason to `first_bad_path` (JSON {reason: [id, detail]}). The index is the TFDS key, as in the pool path, so both
    shuffle the records into the same order. A video still decoding after `video_timeout_s` is a bad sample."""

    def __init__(self, config: PrepareConfig, first_bad_path: str, maker_factory: MakerFactory = ExampleMaker,
                 video_timeout_s: float = 900.0):
        super().__init__()
        self._config, self._first_bad_path = config, first_bad_path
        self._maker_factory, self._timeout_s = maker_factory, video_timeout_s

    def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
        make = _MakeExamples(self._config, self._maker_factory, self._timeout_s)
        made = (root
                | "AnnotationFile" >> beam.Create([self._config.annotation_file])
                | "Entries" >> beam.FlatMap(_entries)
                | "SpreadOverWorkers" >> beam.Reshuffle()
                | "MakeExamples" >> beam.ParDo(make).with_outputs(_BAD, main="examples"))
        _ = (made[_BAD]
             | "FirstOfEachReason" >> beam.CombinePerKey(min)
             | "AllReasons" >> beam.combiners.ToList()
             | "WriteFirstBad" >> beam.Map(_write_first_bad, self._first_bad_path))
        return made.examples


def bad_sample_counter(result: Any, first_bad_path: str, config: PrepareConfig) -> BadSampleCounter:
    """The finished pipeline's bad-sample totals (Beam metrics) and first examples as the pool path's counter:
    same summary, same metadata, and `TooManyBadSamples` under the same threshold (checked here, at the end)."""
    totals = dict.fromkeys((GOOD, *REASONS), 0)
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += int(value or 0)
    path = epath.Path(first_bad_path)
    firsts = json.loads(path.read_text())
    path.unlink()
    counter = BadSampleCounter(max_fraction=1.0, min_samples=0)  # no check while the first examples are replayed
    for reason, (sid, detail) in firsts.items():
        counter.record(reason, sid, detail)
    counter.set_state({GOOD: totals[GOOD], **{f"bad_{r}": totals[r] for r in REASONS}})
    counter.max_fraction, counter.min_samples = config.max_bad_fraction, config.min_samples_for_bad_check
    counter.add_good(0)  # the threshold check on the totals
    return counter
