"""The benchmark harness: ``python -m bench NAME [options]``, every figure of BENCHMARKS.md.

Each benchmark is a module with a ``main(argv)``; they share the machine's description, the
prompt text, percentiles and JSON out (bench.common). None of them is a test: they measure, and
write what they measured to a file (``--json``) with the machine and the command.
"""
