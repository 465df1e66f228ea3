"""Training speed of the silo's step loop against a bare torch loop (`python bench/trainer.py`)."""
