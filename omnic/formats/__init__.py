"""File formats omnic both reads and writes, as torch-free tables and conversions.

`gguf_arch` (llama.cpp's architectures, tensor names and layouts) and `gguf_vocab` (its
`tokenizer.ggml.*` vocabularies) serve the GGUF importer (omnic.importers.gguf) and the GGUF
target (omnic.targets.gguf) alike, so reading and writing cannot disagree.
"""
