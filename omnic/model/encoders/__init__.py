"""Torch modules of the components other than the decoder (plain arguments, never a spec)."""
