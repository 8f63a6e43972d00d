"""Process limits a fleet needs: one socket per IDLE watcher and per connection of the passes.

Under systemd the soft limit on open files is 1024 (the hard limit much higher): 1,000 watched folders
would fail with "Too many open files". mailmirror waits on sockets with poll(), not select(), so it raises
its soft limit to the hard limit at start, as systemd.exec(5) advises such programs to do, and says so
when even the hard limit is short of what the config needs.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Files beyond the sockets: the log, the metrics listener, locks, ...
OTHER_FILES = 64
#: A pass's own files: the state database, its journal and WAL index.
FILES_PER_PASS = 3


def open_files_needed(watchers: int, connections: int, passes: int) -> int:
    return watchers + connections + FILES_PER_PASS * passes + OTHER_FILES


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limit in force (warn if below ``needed``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:  # a container may forbid it: go on with what there is
            log.debug("could not raise the open-file limit from %d to %d: %s", soft, hard, error)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open-file limit %d is below the %d this config may need (IDLE watchers, connections, passes): "
            "raise LimitNOFILE= in the systemd unit (or ulimit -n), or watch fewer folders",
            soft,
            needed,
        )
    return soft
