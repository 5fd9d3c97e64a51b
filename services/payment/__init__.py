"""The payment participant: customers' payment methods, authorisations, captures, voids and refunds."""
