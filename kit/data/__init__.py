"""Data layer: image readers and stores, the tidy label table, the Dataset, folds, synthetic data."""
