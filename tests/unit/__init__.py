"""Tests that start no server: pure logic, config, docs, packaging (the IMAP behaviour is tested in tests/)."""
