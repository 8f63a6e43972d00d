"""Throwaway IMAP servers for tests, the demo and benchmarks (Dovecot, Cyrus, Courier), and sample mail."""
