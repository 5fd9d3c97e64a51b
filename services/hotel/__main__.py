"""`python -m services.hotel`: serve HotelService on TRIPMESH_HOTEL_PORT (50052) until SIGTERM."""

from services.hotel.app import SPEC
from services.participant.runner import run_participant

run_participant(SPEC)
