"""prune-cli: train, prune, retrain."""
