"""Words in messages: "1 epoch" / "2 epochs", "an isic-2024-challenge run" / "a hcd run"."""

from __future__ import annotations

__all__ = ["article", "plural"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "epoch")`` -> "1 epoch", ``plural(3, "epoch")`` -> "3 epochs" (``many`` for irregular words)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def article(word: str) -> str:
    """``article("isic-2024-challenge")`` -> "an isic-2024-challenge": by the first letter's sound, which for kit's
    names (competition slugs, model names) is the letter's own."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
