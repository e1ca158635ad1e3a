"""Training: `python -m tlv_jax.train --config configs/NAME.py --workdir DIR`.

`setup` builds a run (model, data, state, jitted step), `loop` steps it, `export` writes the model at the end; the
command line is `__main__`.
"""


def main() -> None:
    """Console entry point `tlv-train`."""
    from tlv_jax.train.__main__ import main as cli

    cli()
