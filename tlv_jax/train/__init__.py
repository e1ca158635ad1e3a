"""Training: `python -m tlv_jax.train --config configs/NAME.py --workdir DIR` (see `loop` for the run itself)."""


def main() -> None:
    """Console entry point `tlv-train`."""
    from tlv_jax.train.__main__ import main as cli

    cli()
