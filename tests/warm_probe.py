"""Imported only on dask workers, by Runner.start in tests/test_runner.py: its presence in a worker's
sys.modules shows the warm-up ran there (nothing else imports it)."""
