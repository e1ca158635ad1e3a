"""Benchmark evaluation as in the original (Video-MME, MVBench, LongVideoBench, MLVU, MMVU): see `common.evaluate`."""

from tlv_jax.evaluate.answers import open_ended_match, parse_multi_choice_response
from tlv_jax.evaluate.common import Answerer, Benchmark, build_answerer, evaluate, format_table

__all__ = ["Answerer", "Benchmark", "build_answerer", "evaluate", "format_table", "open_ended_match",
           "parse_multi_choice_response", "benchmark"]


def benchmark(name: str) -> Benchmark:
    """The benchmark called `name` (videomme, mvbench, longvideobench, mlvu, mmvu)."""
    from tlv_jax.evaluate import longvideobench, mlvu, mmvu, mvbench, videomme

    table = {m.BENCHMARK.name: m.BENCHMARK for m in (videomme, mvbench, longvideobench, mlvu, mmvu)}
    if name not in table:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(table)}")
    return table[name]
