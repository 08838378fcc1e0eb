"""The error a user meets when their data cannot be used."""


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent; the message says what to do."""
