"""The benchmarks: run each from the repository root as a module (`python -m bench.buffer`), so that it
imports the tests' helpers (`tests.support`) as a package."""
