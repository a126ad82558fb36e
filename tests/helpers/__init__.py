"""What several test modules share (on sys.path through pytest's `pythonpath`): fake tracked runs, the
CLI at the ci profile, small models and batches, a search space. Fixtures live in conftest.py."""
