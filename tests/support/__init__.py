"""The test harnesses, loaded as a pytest plugin (tests/support/plugin.py); benchmarks may import them too.

No test module imports another: what two of them share lives here.
"""
