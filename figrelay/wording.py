"""Words in what figrelay prints: counts with their nouns ("1 dead letter", "2 dead letters")."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``count`` with its noun, singular for exactly 1: ``plural(1, "hook")`` is ``"1 hook"``.

    ``plural_form`` for the nouns that do not just take an s: ``plural(2, "delivery", "deliveries")``.
    """
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"
