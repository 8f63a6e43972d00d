"""The IMAP layer: sessions to real servers, login and TLS, OAuth2 tokens, and the interface the
engine is typed against."""
