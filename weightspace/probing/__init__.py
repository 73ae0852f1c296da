"""The probe engine: ``jit(vmap(apply))`` of a zoo over an ordered probe set, chunked and sharded."""

from weightspace.probing._probe import activation_bytes as activation_bytes
from weightspace.probing._probe import apply_models as apply_models
from weightspace.probing._probe import chunk_sizes as chunk_sizes
from weightspace.probing._probe import kernel_for as kernel_for
from weightspace.probing._probe import probe as probe
from weightspace.probing._probe import probe_collection as probe_collection
from weightspace.probing._probe import probe_kernel as probe_kernel

__all__ = ["activation_bytes", "apply_models", "chunk_sizes", "kernel_for", "probe", "probe_collection", "probe_kernel"]
