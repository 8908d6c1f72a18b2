"""``kit stack``: gradient-boosted trees on tabular metadata and image runs' out-of-fold scores (the ISIC 2024
winners' recipe), trained on the image runs' own folds and written as a folder that kit ensemble and kit submit
take like a run. See kit/stack/stack.py for the folder, features.py for the table, models.py for the GBDTs."""

from kit.stack.stack import StackResult, StackSettings, format_result, run_stack

__all__ = ["StackResult", "StackSettings", "format_result", "run_stack"]
