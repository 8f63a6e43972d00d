"""Every imapsync option the importer knows, with its handler and what it becomes in the config (or why it
cannot be expressed): :data:`OPTIONS` for the command-line reader, :func:`mapping_table` for
docs/imapsync.md (a test keeps the two in step).
"""

from __future__ import annotations

from mailmirror.config import imapsync_handlers as handle
from mailmirror.config.imapsync_conversion import SIDES, Option

# name → Option; names ending in 1/2 are listed once as "name{side}" and expanded below
_SIDED: dict[str, Option] = {
    "host": Option(True, handle.account_key("host"), "accounts.X.host"),
    "port": Option(True, handle.account_key("port", handle.tcp_port), "accounts.X.port"),
    "user": Option(True, handle.account_key("username"), "accounts.X.username"),
    "password": Option(True, handle.password, "accounts.X.password: {env: MAILMIRROR_SOURCE_PASSWORD} (export it)"),
    "passfile": Option(True, handle.passfile, "accounts.X.password: {file: PATH}"),
    "ssl": Option(False, handle.ssl, "accounts.X.tls: implicit"),
    "tls": Option(False, handle.tls, "accounts.X.tls: starttls"),
    "authuser": Option(True, handle.authuser, "accounts.X.authuser (with auth: plain)"),
    "authmech": Option(True, handle.authmech, "accounts.X.auth: login, plain, xoauth2 (others: not supported)"),
    "oauthaccesstoken": Option(
        True, handle.oauth_token, "accounts.X.oauth2_token: {file: PATH}, or {env: …} for a token on the command line"
    ),
    "timeout": Option(True, handle.timeout, "accounts.X.timeout"),
    "sslargs": Option(
        True, handle.sslargs, "SSL_verify_mode=0: tls_verify: false; SSL_ca_file: tls_ca; others not supported"
    ),
    "gmail": Option(False, handle.provider("gmail", "imap.gmail.com"), "accounts.X.provider: gmail"),
    "office": Option(False, handle.provider("office365", "outlook.office365.com"), "accounts.X.provider: office365"),
    "exchange": Option(False, handle.exchange, "no preset for on-premises Exchange: an ordinary IMAP account (noted)"),
    "domino": Option(False, handle.unsupported("--domino1/2: no preset for Domino"), "not supported: no Domino preset"),
}
_SIDED_ONLY_ONE = {
    "sep1": Option(True, handle.sep1, "nothing needed: the separator comes from the server (noted)"),
    "sep2": Option(True, handle.pair_key("folders", "separator"), "pairs.X.folders.separator"),
    "prefix1": Option(True, handle.prefix1, "nothing needed: the prefix comes from NAMESPACE (noted)"),
    "prefix2": Option(True, handle.pair_key("folders", "prefix"), "pairs.X.folders.prefix"),
    "subfolder1": Option(True, handle.pair_key("folders", "from_under"), "pairs.X.folders.from_under"),
    "subfolder2": Option(True, handle.pair_key("folders", "under"), "pairs.X.folders.under"),
    "search1": Option(True, handle.pair_key("messages", "search"), "pairs.X.messages.search"),
    "search2": Option(
        True,
        handle.unsupported_narrowing("--search2: mailmirror selects source messages only"),
        "not supported: selection is on the source",
    ),
    "delete1": Option(
        False, handle.pair_flag("deletions", "source", "after_copy"), "pairs.X.deletions.source: after_copy"
    ),
    "delete2": Option(
        False, handle.pair_flag("deletions", "destination", "mirror"), "pairs.X.deletions.destination: mirror"
    ),
    "delete2folders": Option(
        False, handle.pair_flag("deletions", "delete_missing_folders"), "pairs.X.deletions.delete_missing_folders: true"
    ),
    "timeout1": Option(True, handle.timeout, "accounts.source.timeout"),
    "timeout2": Option(True, handle.timeout, "accounts.destination.timeout"),
}
_GLOBAL: dict[str, Option] = {
    "automap": Option(False, handle.automap, "pairs.X.folders.automap: true (without it: automap: false, as imapsync)"),
    "folder": Option(True, handle.folder, "pairs.X.folders.include: [NAME]"),
    "folderrec": Option(True, handle.folderrec, "pairs.X.folders.include: [NAME/**]"),
    "include": Option(True, handle.regex_list("include"), "pairs.X.folders.include: ['re:REGEX']"),
    "exclude": Option(True, handle.regex_list("exclude"), "pairs.X.folders.exclude: ['re:REGEX']"),
    "regextrans2": Option(
        True, handle.regextrans2, "pairs.X.folders.rename: [{pattern, replacement}] (s/…/…/ with g, i)"
    ),
    "f1f2": Option(True, handle.f1f2, "pairs.X.folders.map: {SOURCE: DESTINATION}"),
    "maxage": Option(True, handle.days("max_age"), "pairs.X.messages.max_age: Nd"),
    "minage": Option(True, handle.days("min_age"), "pairs.X.messages.min_age: Nd"),
    "maxsize": Option(True, handle.size("max_size", -1), "pairs.X.messages.max_size: N-1 (imapsync skips size = N)"),
    "minsize": Option(True, handle.size("min_size", +1), "pairs.X.messages.min_size: N+1 (imapsync skips size = N)"),
    "search": Option(True, handle.pair_key("messages", "search"), "pairs.X.messages.search"),
    "skipcrossduplicates": Option(
        False,
        handle.pair_flag("messages", "skip_cross_folder_duplicates"),
        "pairs.X.messages.skip_cross_folder_duplicates",
    ),
    "useheader": Option(True, handle.useheader, "pairs.X.messages.identity_headers (ALL: not supported)"),
    "skipsize": Option(False, handle.ignored, "always: the size is part of a message's identity"),
    "regexflag": Option(True, handle.regexflag, "s/FLAG//: pairs.X.flags.drop; s/A/B/ of single flags: flags.rename"),
    "skipemptyfolders": Option(False, handle.pair_flag("folders", "skip_empty"), "pairs.X.folders.skip_empty: true"),
    "subscribed": Option(
        False, handle.pair_flag("folders", "subscribed_only"), "pairs.X.folders.subscribed_only: true"
    ),
    "subscribe": Option(False, handle.pair_flag("folders", "subscribe"), "pairs.X.folders.subscribe (true by default)"),
    "subscribeall": Option(False, handle.subscribeall, "not supported: only source subscriptions are copied"),
    "maxbytespersecond": Option(
        True, handle.rate("max_bytes_per_second", int), "accounts.source.max_bytes_per_second (at least 1024)"
    ),
    "maxmessagespersecond": Option(
        True, handle.rate("max_messages_per_second", float), "accounts.source.max_messages_per_second"
    ),
    "timeout": Option(True, handle.timeout, "accounts.X.timeout, both sides"),
    "justfolders": Option(
        False,
        handle.unsupported_narrowing("--justfolders: mailmirror always copies messages with their folders"),
        "not supported: a pass copies folders and messages together",
    ),
    "dry": Option(
        False,
        handle.noted("--dry: not a config setting; run `mailmirror sync --dry-run` (or `mailmirror plan`)"),
        "`mailmirror sync --dry-run` / `mailmirror plan`",
    ),
    "justfoldersizes": Option(False, handle.noted("--justfoldersizes: run `mailmirror plan`"), "`mailmirror plan`"),
    "justlogin": Option(False, handle.noted("--justlogin: run `mailmirror check`"), "`mailmirror check`"),
    "justconnect": Option(False, handle.noted("--justconnect: run `mailmirror check`"), "`mailmirror check`"),
    "delete2duplicates": Option(
        False,
        handle.unsupported("--delete2duplicates: mailmirror never deletes destination messages it did not copy"),
        "not supported: destination messages mailmirror did not copy are never deleted",
    ),
    "delete2foldersonly": Option(
        True,
        handle.narrowed_folder_deletion("--delete2foldersonly: delete_missing_folders applies to every mapped folder"),
        "not supported: delete_missing_folders has no folder filter; --delete2folders is then not converted either",
    ),
    "delete2foldersbutnot": Option(
        True,
        handle.narrowed_folder_deletion(
            "--delete2foldersbutnot: delete_missing_folders applies to every mapped folder"
        ),
        "not supported: delete_missing_folders has no folder filter; --delete2folders is then not converted either",
    ),
    "expunge1": Option(False, handle.ignored, "part of deletions.source: after_copy"),
    "noexpungeaftereach": Option(False, handle.ignored, "nothing: mailmirror expunges per batch"),
    "syncinternaldates": Option(False, handle.ignored, "always: INTERNALDATE is copied"),
    "idatefromheader": Option(
        False,
        handle.unsupported("--idatefromheader: mailmirror copies the source INTERNALDATE as it is"),
        "not supported: INTERNALDATE is copied, not derived from Date:",
    ),
    "syncacls": Option(
        False, handle.unsupported("--syncacls: mailmirror does not copy ACLs"), "not supported: ACLs are not copied"
    ),
    "nosyncacls": Option(False, handle.ignored, "always: ACLs are not copied"),
    "resyncflags": Option(False, handle.ignored, "always: pairs.X.flags.sync: true"),
    "syncflagsaftercopy": Option(False, handle.ignored, "always: flags are copied with each message"),
    "addheader": Option(
        False,
        handle.unsupported("--addheader: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "disarmreadreceipts": Option(
        False,
        handle.unsupported("--disarmreadreceipts: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "maxlinelength": Option(
        True,
        handle.unsupported_narrowing("--maxlinelength: mailmirror has no line-length rule"),
        "not supported: no line-length rule",
    ),
    "minmaxlinelength": Option(
        True, handle.unsupported_narrowing("--minmaxlinelength: no line-length rule"), "not supported"
    ),
    "exitwhenover": Option(
        True,
        handle.unsupported_narrowing("--exitwhenover: mailmirror has no transfer volume cap per run"),
        "not supported: no volume cap per run",
    ),
    "errorsmax": Option(True, handle.ignored, "nothing: a pass records each failure and goes on"),
    "noskipsize": Option(
        False,
        handle.noted(
            "--noskipsize: mailmirror always compares sizes when it matches messages already on the destination"
        ),
        "nothing: the size is always part of a message's identity (noted)",
    ),
    "folderfirst": Option(True, handle.ignored, "nothing: the order of folders in a pass is mailmirror's"),
    "folderlast": Option(True, handle.ignored, "nothing: the order of folders in a pass is mailmirror's"),
    "skipheader": Option(
        True,
        handle.unsupported("--skipheader: mailmirror matches messages by messages.identity_headers only"),
        "not supported: identity_headers names the headers that count",
    ),
    "skipmess": Option(
        True,
        handle.unsupported_narrowing("--skipmess: mailmirror has no rule on message content; use messages.search"),
        "not supported: no content regex (messages.search selects by IMAP SEARCH)",
    ),
    "regexmess": Option(
        True,
        handle.unsupported("--regexmess: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "pipemess": Option(
        True,
        handle.unsupported("--pipemess: mailmirror copies messages byte for byte"),
        "not supported: messages are copied byte for byte",
    ),
    "proxyauth1": Option(
        False,
        handle.unsupported("--proxyauth1: mailmirror logs in as authuser with SASL PLAIN instead of PROXYAUTH"),
        "not supported: use authuser (SASL PLAIN authorization identity)",
    ),
    "compress1": Option(False, handle.ignored, "nothing: no COMPRESS=DEFLATE"),
    "compress2": Option(False, handle.ignored, "nothing: no COMPRESS=DEFLATE"),
    "keepalive1": Option(False, handle.ignored, "nothing: connections are kept by the daemon"),
    "keepalive2": Option(False, handle.ignored, "nothing: connections are kept by the daemon"),
    "releasecheck": Option(False, handle.ignored, "nothing"),
    "noreleasecheck": Option(False, handle.ignored, "nothing"),
    "syncduplicates": Option(False, handle.ignored, "always: each source copy of a message is copied"),
    "nofoldersizes": Option(False, handle.ignored, "nothing: sizes are computed by `mailmirror plan` only"),
    "nofoldersizesatend": Option(False, handle.ignored, "nothing: sizes are computed by `mailmirror plan` only"),
    "foldersizes": Option(False, handle.ignored, "`mailmirror plan`"),
    "usecache": Option(False, handle.ignored, "nothing: the state database always remembers what was copied"),
    "nousecache": Option(False, handle.ignored, "nothing: the state database always remembers what was copied"),
    "useuid": Option(False, handle.ignored, "always: the state maps source UIDs to destination UIDs"),
    "logfile": Option(True, handle.ignored, "nothing: logs go to stderr/journald (log.format)"),
    "logdir": Option(True, handle.ignored, "nothing: logs go to stderr/journald (log.format)"),
    "nolog": Option(False, handle.ignored, "nothing: logs go to stderr/journald"),
    "pidfile": Option(True, handle.ignored, "nothing: systemd/Kubernetes track the process"),
    "pidfilelocking": Option(False, handle.ignored, "always: pair locks beside the state database"),
    "tmpdir": Option(True, handle.ignored, "nothing: no temporary files"),
    "debug": Option(False, handle.ignored, "`mailmirror -v`"),
    "nodebug": Option(False, handle.ignored, "nothing"),
    "split1": Option(True, handle.ignored, "transfer.batch_messages / batch_size (batches bounded by bytes)"),
    "split2": Option(True, handle.ignored, "transfer.batch_messages / batch_size (batches bounded by bytes)"),
    "buffersize": Option(True, handle.ignored, "nothing"),
}


def _expand() -> dict[str, tuple[Option, int]]:
    table: dict[str, tuple[Option, int]] = {}
    for name, option in _SIDED.items():
        for side in SIDES:
            table[f"{name}{side}"] = (option, side)
    for name, option in _SIDED_ONLY_ONE.items():
        table[name] = (option, int(name[-1]) if name[-1] in "12" else 0)
    for name, option in _GLOBAL.items():
        table[name] = (option, 0)
    return table


OPTIONS = _expand()
NEGATABLE = {"ssl1", "ssl2", "tls1", "tls2", "automap", "subscribe", "delete2", "delete1", "skipcrossduplicates"}


def mapping_table() -> list[tuple[str, str]]:
    """(imapsync option, what it becomes) for docs/imapsync.md, in table order."""
    rows = [(f"--{name}1 / --{name}2", option.mapping) for name, option in _SIDED.items()]
    rows += [(f"--{name}", option.mapping) for name, option in _SIDED_ONLY_ONE.items()]
    rows += [(f"--{name}", option.mapping) for name, option in _GLOBAL.items()]
    return rows
