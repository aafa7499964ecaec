"""ml_collections config files for `python -m experiments.train --config=`."""
