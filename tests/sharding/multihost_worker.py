"""One process of a real multi-process run on localhost (driven by test_multihost.py): joins the others through
`jax.distributed` (coordinator on 127.0.0.1), checks that every process runs the same config at the same step,
resumes from the last checkpoint if there is one, trains the tiny model up to step `--until` feeding only this
process's rows of each global batch, saves a checkpoint and prints `RESULT {json}`.

    python tests/sharding/multihost_worker.py --coordinator 127.0.0.1:PORT --num_processes 2 --process_id I \
        --devices 4 --workdir DIR --until 2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coordinator", default="")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--devices", type=int, default=4, help="CPU devices of this process")
    p.add_argument("--workdir", required=True)
    p.add_argument("--until", type=int, default=0, help="train up to (not including) this step")
    p.add_argument("--mesh", default="2,4,1", help="data,fsdp,tensor over all processes' devices")
    p.add_argument("--dcn_data", type=int, default=1, help="data-axis groups, one per process")
    p.add_argument("--config_salt", default="", help="makes this process's config differ (error test)")
    p.add_argument("--step_offset", type=int, default=0, help="makes this process's step differ (error test)")
    p.add_argument("--check_only", action="store_true", help="stop after the start-up agreement check")
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    from tlv_jax.sharding import distributed

    cfg = distributed.DistributedConfig(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                        process_id=args.process_id, initialization_timeout_s=60)
    config = json.dumps({"model": "tiny", "mesh": args.mesh, "salt": args.config_salt}, sort_keys=True)
    config_hash = distributed.startup(cfg, args.workdir, config)

    from tlv_jax.train.checkpoint import Checkpointer, abstract_like

    ckpt = Checkpointer(Path(args.workdir) / "checkpoints", every=1000, keep=2, async_save=False)
    resume = ckpt.latest_step()
    step = (resume or 0) + args.step_offset
    distributed.assert_same_across_processes(config_hash=config_hash, step=step)
    if args.check_only:
        ckpt.close()
        return

    from tiny import Trainer  # alongside this file (sys.path[0])

    from tlv_jax.sharding.mesh import make_mesh

    mesh = make_mesh(*(int(x) for x in args.mesh.split(",")), dcn_data=args.dcn_data)
    trainer = Trainer(mesh)
    if resume is None:
        state = trainer.init()
    else:
        state, position = ckpt.restore(resume, abstract_like(trainer.abstract, trainer.shardings))
        if position != {"next_step": resume}:
            raise RuntimeError(f"restored data position {position}, expected next_step {resume}")
    state, losses = trainer.run(state, range(step, args.until))
    ckpt.save(args.until, state, {"next_step": args.until}, force=True)
    ckpt.close()
    print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                  "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                                  "start": step, "losses": losses,
                                  "data_groups": [sorted({d.process_index for d in mesh.devices[i].flat})
                                                  for i in range(mesh.shape["data"])]}), flush=True)


if __name__ == "__main__":
    main()
