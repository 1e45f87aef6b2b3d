"""What the tests share, as plain modules: the key and its scan, the runners of the
plugins (tap, mapper/target, Meltano), the sandboxes and PostgreSQL a test starts, and
the Singer messages a test writes or reads.

Conftests hold fixtures only; a test imports what it needs from here, never from a
conftest (tests/test_test_house.py keeps it so).
"""
