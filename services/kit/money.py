"""Money as integer minor units with a currency; never a float."""

from __future__ import annotations

from dataclasses import dataclass

ACCEPTED_CURRENCIES = frozenset({"EUR", "GBP", "USD"})
CATALOGUE_CURRENCY = "EUR"


@dataclass(frozen=True, slots=True)
class Money:
    minor_units: int
    currency: str

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.minor_units + other.minor_units, self.currency)

    def times(self, factor: int) -> Money:
        return Money(self.minor_units * factor, self.currency)

    def __str__(self) -> str:
        sign = "-" if self.minor_units < 0 else ""
        whole, cents = divmod(abs(self.minor_units), 100)
        return f"{sign}{whole}.{cents:02d} {self.currency}"
