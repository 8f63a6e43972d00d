"""What mailmirror remembers on this machine: the state database (UID maps, journal, history) and the
destination locks. Knows no IMAP."""
