"""Batch ML code (training set, training, evaluation, registry): arrives with the model issue."""
