"""Native CPU kernels for the decode step (see `cpu_kernels.cc` for why they exist).

`ops` holds the JAX-callable wrappers and `KernelChoice` (the static argument that lets traced
code call them); `build` compiles and registers the library on first use and reports whether it
is usable.
"""
