"""`jax.jit` for library entry points that compile large programs on the CPU.

XLA:CPU's fusion emitters (the default in jax 0.10) take much more host memory to compile the
kernel-thinning programs than the older loop emitters, for no gain at run time (measured on
2 CPU cores, KT at n = 2^14, d = 2: peak resident memory 353 MB with them, 255 MB without;
first call 5.6 s and 4.7 s; warm calls equal within noise). `cpu_entry_point` compiles a
top-level call on the CPU without them. Compiler options are only allowed on a top-level
`jax.jit`, so a call made inside a user's `jit`, `vmap` or `grad` (any argument a tracer)
goes through a plain `jax.jit` of the same function instead, which composes as usual.
"""

from __future__ import annotations

import functools

import jax

_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


class cpu_entry_point:
    """`jax.jit(fun, static_argnames=...)`, compiled with `_CPU_OPTIONS` when called at top
    level on the CPU. Attributes such as `lower`, `trace`, `_cache_size` and `clear_cache` are
    those of the top-level jit."""

    def __init__(self, fun=None, *, static_argnames=()):
        self.nested = jax.jit(fun, static_argnames=static_argnames)
        self.top = jax.jit(fun, static_argnames=static_argnames, compiler_options=_CPU_OPTIONS)
        functools.update_wrapper(self, fun)

    def __call__(self, *args, **kwargs):
        traced = any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves((args, kwargs)))
        if traced or jax.default_backend() != "cpu":
            return self.nested(*args, **kwargs)
        return self.top(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.top, name)


def cpu_jit(*, static_argnames=()):
    """Decorator form: `@cpu_jit(static_argnames=(...))`."""
    return functools.partial(cpu_entry_point, static_argnames=static_argnames)
