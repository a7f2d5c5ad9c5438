"""Never named to Runner.start and never imported: the control beside tests/warm_probe.py."""
