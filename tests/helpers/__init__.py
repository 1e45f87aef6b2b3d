"""What the tests share, as plain modules: the key and its scan, the runners of the
plugins (tap, mapper/target, Meltano), the sandboxes and PostgreSQL a test starts, the
Singer messages a test writes or reads, the check that a warehouse holds exactly the
sandbox's jobs and rows (warehouse.py), and what the Dagster tests share (orchestration.py).

Conftests hold fixtures only; a test imports what it needs from here, never from a
conftest (tests/test_test_house.py keeps it so).
"""
