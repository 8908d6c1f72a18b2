"""kit: k-fold CNN / timm training, TTA, ensembling and Kaggle submissions for image competitions."""

__version__ = "0.1.0"
