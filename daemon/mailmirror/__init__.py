"""mailmirror: declarative, stateful IMAP mirroring and backup."""

__version__ = "0.1.0"
