"""Drift monitoring: a traffic window against the served version's reference -> ok / warn / retrain."""
