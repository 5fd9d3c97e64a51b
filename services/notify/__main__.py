"""`python -m services.notify`: serve NotificationService (and its outbox dispatcher) until signalled."""

from services.notify.servicer import SPEC
from services.participant.runner import run_participant

if __name__ == "__main__":
    run_participant(SPEC)
