"""Fare rules: what a cancellation of a booked trip keeps (pure).

Cancelled at least FREE_CANCELLATION_DAYS before the outbound flight, a trip is refunded in full. Closer
to departure, the flight's fare keeps a share of the flight's price by cabin (business fares are
flexible); hotels and cars always cancel free. The fee is fixed when CancelTrip is accepted and
recorded with the cancellation, so a resend after a crash refunds the same amount.
"""

from __future__ import annotations

from datetime import date

from coordinator.trip import FlightPart, flight_date

FREE_CANCELLATION_DAYS = 30
# Percent of the flight's price kept, by cabin: 1 economy, 2 premium economy, 3 business.
KEPT_PERCENT = {1: 20, 2: 10, 3: 0}


def cancellation_fee(flight: FlightPart, flight_price_minor: int, today: date) -> int:
    departure = flight_date(flight.outbound_flight_id)
    if departure is None or (departure - today).days >= FREE_CANCELLATION_DAYS:
        return 0
    return flight_price_minor * KEPT_PERCENT.get(flight.cabin, 0) // 100
