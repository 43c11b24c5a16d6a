"""Training: the plan the engine reads, the engine, its command line (`main.py`), state and resume,
validation, losses."""
