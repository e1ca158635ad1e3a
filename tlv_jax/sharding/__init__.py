"""Scale-out: the logical-axis rules (`rules`), the (data, fsdp, tensor) mesh and the shardings derived from them
(`mesh`), global batches from per-process data (`global_batch`), multi-process start-up (`distributed`) and its
command-line flags (`flags`)."""
