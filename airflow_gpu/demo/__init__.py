"""`airflow-gpu demo` (:mod:`.command`) and the synthetic data generator (:mod:`.synthetic`) that the
demo, the tests and the benchmarks share. Importing the package loads nothing heavy."""
