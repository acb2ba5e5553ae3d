"""Hand-written TIR kernels of the TVM target, called from Relax through `call_tir_inplace`."""
