"""File formats omnic both reads and writes, as torch-free tables and conversions.

`gguf_arch` (llama.cpp's tensor names and layouts), `gguf_families` (which llama.cpp
architecture carries a spec, and why none does), `gguf_hparams` (the `{arch}.*` keys and
llama.cpp's own extra tensors) and `gguf_vocab` (its `tokenizer.ggml.*` vocabularies) serve the
GGUF importer (omnic.importers.gguf) and the GGUF target (omnic.targets.gguf) alike, so reading
and writing cannot disagree.
"""
