"""`python -m tlv_jax.train.export` (what a finished run does itself) writes `model/` and the PyTorch `export/`
whole or not at all: killed before either is in place it leaves neither, killed before the second it leaves the
first complete, and the next export removes the leftovers."""

import json
import shutil
import subprocess
import sys

from tests import fault_at
from tlv_jax.convert.orbax_io import read_meta

from .conftest import cli_env


def leftovers(workdir):
    return sorted(p.name.split(".tmp-")[0] for p in workdir.iterdir() if ".tmp-" in p.name)


def test_a_killed_export_leaves_no_directory_and_the_next_one_cleans_up(tiny_config, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    config = json.loads((reference / "config.json").read_text())
    config["export"]["torch"] = True
    (run / "config.json").write_text(json.dumps(config))
    command, env = ["-m", "tlv_jax.train.export", "--workdir", run], cli_env(tiny_config)

    for n, (model, left) in enumerate([(False, [".model"]), (True, [".export"])], start=1):
        # Stalled at the n-th rename into place (model/, then export/) with everything written, and killed.
        marker, log = tmp_path / f"m{n}", tmp_path / f"log{n}"
        proc = fault_at.start("stall", marker, "tlv_jax.convert.atomic:_commit", n, command, log, env)
        fault_at.kill_at_marker(proc, marker, log)
        assert (run / "model").exists() == model and not (run / "export").exists() and leftovers(run) == left
    assert read_meta(run / "model")["kind"] == "tinyllava"

    done = subprocess.run([sys.executable, *map(str, command)], cwd=fault_at.ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "export" / "config.json").exists() and leftovers(run) == []
