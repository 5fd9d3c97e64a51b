"""The notification participant: stages messages, sends confirmed ones by SMTP through an outbox."""
