"""The benchmark harness (issue 6): `make bench`, or `python -m bench --help`. Not part of the test command."""
