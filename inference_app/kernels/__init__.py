"""Native CPU kernels for the decode step (see `cpu_kernels.cc` for why they exist).

`ops` holds the JAX-callable wrappers and the switch the model reads while tracing; `build`
compiles and registers the library on first use and reports whether it is usable.
"""
