"""`python -m services.payment`: serve PaymentService until SIGTERM/SIGINT."""

from services.participant.runner import run_participant
from services.payment.servicer import SPEC

if __name__ == "__main__":
    run_participant(SPEC)
