"""The Python example in the README runs as written (with its paths pointed at a fixture model and a real clip)."""

import re
from pathlib import Path

import numpy as np

from tests.test_generate import write_mp4

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "tlv_jax.load(" in b and ".generate(" in b)
    return example


def test_readme_api_example_runs(fixtures_dir, tmp_path, capsys, monkeypatch):
    d = fixtures_dir / "qwen2-group-f16"
    ref = np.load(d / "reference.npz")
    frames = np.ascontiguousarray(ref["raw_frames"].transpose(0, 2, 3, 1)[:, :44, :70])
    write_mp4(tmp_path / "clip.mp4", np.repeat(frames, 2, axis=0))
    code = readme_python_example()
    model_path = re.search(r'tlv_jax\.load\("([^"]+)"', code).group(1)
    code = code.replace(f'"{model_path}"', repr(str(d / "finetune")))
    monkeypatch.chdir(tmp_path)  # the example's "clip.mp4"
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed, "the example printed no answer"
    import tlv_jax

    model = tlv_jax.load(d / "finetune")
    assert printed == model.generate(video=str(tmp_path / "clip.mp4"), prompt="What colour is the square?",
                                     max_new_tokens=32)
