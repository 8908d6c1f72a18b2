"""Looking at the data and the model: augmented batches, the worst out-of-fold errors, class-activation maps and the
learning-rate range test. Each writes its picture into a folder the caller names and returns the paths, so the
commands (``kit show``, ``kit lr-find``) and the run page can embed them.

The floor sits above prediction (it reuses a fold's model and images as ``kit predict`` reads them) and below the
report (which embeds its pictures).
"""
