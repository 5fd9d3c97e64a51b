"""The customers and payment methods a fresh payment database starts with (written only when empty).

Payment methods are opaque tokens with a brand and the last four digits: no card number is ever stored.
Every method is in EUR; limits are in cents.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from services.payment.models import customers, payment_methods


@dataclass(frozen=True)
class SeedMethod:
    payment_method_id: str
    customer_id: str
    brand: str
    last4: str
    credit_limit_minor: int
    always_declines: bool = False


SEED_CUSTOMERS = {
    "cust-ada": "Ada Lovelace",
    "cust-bob": "Bob Marley",
    "cust-load": "Load Tester",
    "cust-scarce": "Scarce Credit",
    "cust-chen": "Chen Wei",
    "cust-dara": "Dara O'Brien",
    "cust-emil": "Emil Nolde",
    "cust-fatima": "Fatima Mernissi",
}

SCARCE_LIMIT_MINOR = 10 * 1000

SEED_METHODS = (
    SeedMethod("pm_ada_visa", "cust-ada", "visa", "4242", 500_000),
    SeedMethod("pm_ada_declined", "cust-ada", "visa", "0002", 500_000, always_declines=True),
    SeedMethod("pm_bob_mc", "cust-bob", "mastercard", "4444", 20_000),
    SeedMethod("pm_load_visa", "cust-load", "visa", "1111", 10**13),
    SeedMethod("pm_scarce_visa", "cust-scarce", "visa", "0077", SCARCE_LIMIT_MINOR),
    SeedMethod("pm_chen_amex", "cust-chen", "amex", "8431", 1_000_000),
    SeedMethod("pm_dara_visa", "cust-dara", "visa", "1881", 300_000),
    SeedMethod("pm_emil_mc", "cust-emil", "mastercard", "5100", 600_000),
    SeedMethod("pm_fatima_visa", "cust-fatima", "visa", "3220", 800_000),
)


def seed(conn: Connection) -> None:
    """Insert the seed customers and methods, unless the database already has customers."""
    existing = (conn.execute(select(func.count()).select_from(customers))).scalar_one()
    if existing:
        return
    conn.execute(insert(customers), [{"customer_id": k, "name": v} for k, v in SEED_CUSTOMERS.items()])
    conn.execute(
        insert(payment_methods),
        [
            {
                "payment_method_id": m.payment_method_id,
                "customer_id": m.customer_id,
                "brand": m.brand,
                "last4": m.last4,
                "currency": "EUR",
                "always_declines": m.always_declines,
                "credit_limit_minor": m.credit_limit_minor,
                "authorized_minor": 0,
                "captured_minor": 0,
            }
            for m in SEED_METHODS
        ],
    )
