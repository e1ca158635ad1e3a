"""Low-rank adapters (LoRA, QLoRA) on any component of the model, through qwix: `spec` reads the run config's
`lora` block, `adapters` adds, merges and picks out the adapters, `fingerprint` ties adapters to their base."""
