"""The server contract suite: one set of end-to-end scenarios over the lab's server matrix.

Every scenario runs for (source kind, destination kind) pairs: Cyrus "/" (altnamespace), Cyrus "."
(``INBOX.`` prefix) and Courier, each from and to Dovecot, and Cyrus "/" <-> Courier.  The servers are
the session's (``lab_server`` fixture, one per kind); every test makes fresh users and a small edge-case
corpus (tests/contract_corpus.py).

Scenarios: first copy (flags, keywords, INTERNALDATE, nested / non-ASCII / empty folders, a big-ish
message, a message without Message-ID), subscriptions, ``verify``, a pass with no change, flag and
keyword changes, mirrored expunges, new mail, a renamed folder, UIDVALIDITY changes on either side,
special-use automap, automap never merging two source folders, and a message with 8-bit header bytes
(Cyrus rewrites them: reported as altered by the destination, not as Complete).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from imapclient import IMAPClient

from mailmirror.engine.outcome import PairReport
from mailmirror.lab.dovecot import LabUser, SeedMessage, seed
from mailmirror.lab.servers import LabServer
from tests.conftest import LabServerOf
from tests.contract_corpus import (
    BASE_DATE,
    EMPTY,
    RENAMED_FROM,
    RENAMED_TO,
    UNSUBSCRIBED,
    edge_mailbox,
    header_8bit_message,
    message,
)
from tests.support import Setup, make_setup

PAIRS: tuple[tuple[str, str], ...] = (
    ("dovecot", "cyrus-slash"),
    ("cyrus-slash", "dovecot"),
    ("dovecot", "cyrus-dot"),
    ("cyrus-dot", "dovecot"),
    ("dovecot", "courier"),
    ("courier", "dovecot"),
    ("cyrus-slash", "courier"),
    ("courier", "cyrus-slash"),
)

Snapshot = dict[str, list[tuple[bytes, frozenset[str]]]]


def pair_params(*marks_for: tuple[str, str, pytest.MarkDecorator]) -> list[object]:
    """PAIRS as pytest params, with ``marks_for`` = (source kind or "*", destination kind or "*", mark)."""
    params: list[object] = []
    for source, destination in PAIRS:
        marks = [
            mark
            for want_source, want_destination, mark in marks_for
            if want_source in ("*", source) and want_destination in ("*", destination)
        ]
        params.append(pytest.param(source, destination, marks=marks, id=f"{source}-to-{destination}"))
    return params


# ------------------------------------------------------------------------------------------ helpers


@contextmanager
def connected(server: LabServer, user: LabUser) -> Iterator[IMAPClient]:
    client = server.connect(user)
    try:
        yield client
    finally:
        client.logout()


def logical_name(server: LabServer, name: str) -> str:
    if name.upper() == "INBOX":
        return "INBOX"
    if server.prefix and name.startswith(server.prefix):
        name = name[len(server.prefix) :]
    return name.replace(server.separator, "/")


def snapshot(server: LabServer, user: LabUser) -> Snapshot:
    """logical folder -> sorted [(bytes, flags without \\Recent)] of every selectable folder."""
    contents: Snapshot = {}
    with connected(server, user) as client:
        for flags, _delimiter, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            info = client.select_folder(name, readonly=True)
            messages: list[tuple[bytes, frozenset[str]]] = []
            if int(info[b"EXISTS"]):
                for data in client.fetch(client.search(), ["BODY.PEEK[]", "FLAGS"]).values():
                    kept = frozenset(f.decode() for f in data[b"FLAGS"]) - {"\\Recent"}
                    messages.append((data[b"BODY[]"], kept))
            contents[logical_name(server, name)] = sorted(messages, key=lambda m: m[0])
    return contents


def subscriptions(server: LabServer, user: LabUser) -> set[str]:
    with connected(server, user) as client:
        # LSUB lists the \\Noselect parents of subscribed folders on some servers (Courier): not subscriptions.
        listed = client.list_sub_folders()
        return {logical_name(server, name) for flags, _sep, name in listed if b"\\Noselect" not in flags} - {"INBOX"}


def seed_logical(server: LabServer, user: LabUser, mailbox: dict[str, list[SeedMessage]]) -> None:
    with connected(server, user) as client:
        for logical, messages in mailbox.items():
            name = server.folder_name(logical)
            seed(client, name, messages)
            if logical == UNSUBSCRIBED:
                client.unsubscribe_folder(name)


def is_empty_parent(folder: str, source: Snapshot, destination: Snapshot, everything: set[str]) -> bool:
    """Cyrus creates (and lists as selectable) the parents of a new folder, Dovecot lists them \\Noselect:
    an empty parent on one side only is not a difference."""
    return (
        not source.get(folder)
        and not destination.get(folder)
        and any(other.startswith(folder + "/") for other in everything)
    )


def differences(source: Snapshot, destination: Snapshot) -> list[str]:
    """Readable differences between two snapshots (folders and messages; empty when equal)."""
    found = []
    everything = set(source) | set(destination)
    for folder in sorted(everything):
        if is_empty_parent(folder, source, destination, everything):
            continue
        if folder not in destination:
            found.append(f"{folder}: missing on the destination")
        elif folder not in source:
            found.append(f"{folder}: only on the destination ({len(destination[folder])} messages)")
        elif source[folder] != destination[folder]:
            src, dst = source[folder], destination[folder]
            only_src = [m for m in src if m not in dst]
            only_dst = [m for m in dst if m not in src]
            found.append(
                f"{folder}: {len(src)} vs {len(dst)} messages; source only: "
                + "; ".join(f"{m[0][:60]!r} {sorted(m[1])}" for m in only_src[:3])
                + " | destination only: "
                + "; ".join(f"{m[0][:60]!r} {sorted(m[1])}" for m in only_dst[:3])
            )
    return found


def run_ok(setup: Setup, *args: str) -> str:
    """``mailmirror ARGS`` in a subprocess (exit code and output as a user sees them); 0 expected."""
    result = setup.run(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mailmirror {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


def sync_ok(setup: Setup) -> PairReport:
    """One pass in this process (faster than the CLI); it must end complete, without failures."""
    report = setup.sync()
    problems = [(folder.source, folder.failed) for folder in report.folders if folder.failed or not folder.complete]
    assert report.error is None and report.complete and not problems, (report.error, problems)
    return report


def verify_ok(setup: Setup) -> None:
    verdict = setup.verify()
    assert verdict.clean, (verdict.error, [folder for folder in verdict.folders if folder.differences])


# --------------------------------------------------------------------------------------- scenarios

MIRROR = "deletions: {destination: mirror, max_share: 1.0}"


@pytest.mark.parametrize(("source_kind", "destination_kind"), pair_params())
def test_first_copy_changes_and_verify(lab_server: LabServerOf, source_kind: str, destination_kind: str) -> None:
    source, destination = lab_server(source_kind), lab_server(destination_kind)
    su, du = source.add_user(), destination.add_user()
    seed_logical(source, su, edge_mailbox())
    setup = make_setup(source, su, destination, du, pair_options=MIRROR)

    # First copy (the command a user runs): every folder (the empty one too), bytes, flags, keywords;
    # subscriptions follow.
    run_ok(setup, "sync")
    assert differences(snapshot(source, su), snapshot(destination, du)) == []
    assert EMPTY in snapshot(destination, du)
    source_subscribed = subscriptions(source, su)
    assert UNSUBSCRIBED not in source_subscribed
    assert subscriptions(destination, du) == source_subscribed
    verify_ok(setup)

    # A pass with no change copies nothing.
    assert sync_ok(setup).copied == 0

    # Changes on the source: flags and keywords, an expunge, new mail, a subscription.
    with connected(source, su) as client:
        client.select_folder("INBOX")
        uids = sorted(client.search())
        client.add_flags([uids[0]], ["\\Flagged", "follow-up"])
        client.remove_flags([uids[1]], ["\\Seen"])
        client.add_flags([uids[6]], ["\\Seen"])
        client.remove_flags([uids[6]], ["project-x"])
        client.delete_messages([uids[4]])
        client.expunge()
        client.append("INBOX", message("INBOX", 100), flags=("\\Seen",), msg_time=BASE_DATE)
        client.append(source.folder_name("Projects"), message("Projects", 101), msg_time=BASE_DATE)
        client.subscribe_folder(source.folder_name(UNSUBSCRIBED))
    report = sync_ok(setup)
    assert report.copied == 2
    assert differences(snapshot(source, su), snapshot(destination, du)) == []
    assert UNSUBSCRIBED in subscriptions(destination, du)

    # And again nothing to do; verify (the command) agrees.
    assert sync_ok(setup).copied == 0
    run_ok(setup, "verify")


@pytest.mark.parametrize(("source_kind", "destination_kind"), pair_params())
def test_a_folder_renamed_on_the_source_is_renamed_not_copied_again(
    lab_server: LabServerOf, source_kind: str, destination_kind: str
) -> None:
    """A folder renamed on the source is renamed on the destination, not copied again."""
    source, destination = lab_server(source_kind), lab_server(destination_kind)
    su, du = source.add_user(), destination.add_user()
    two = [SeedMessage(message(RENAMED_FROM, 500 + n), ("\\Seen",), BASE_DATE) for n in range(2)]
    seed_logical(source, su, {"INBOX": [], "Projects": [SeedMessage(message("Projects", 499))], RENAMED_FROM: two})
    setup = make_setup(source, su, destination, du)
    sync_ok(setup)
    with connected(source, su) as client:
        client.rename_folder(source.folder_name(RENAMED_FROM), source.folder_name(RENAMED_TO))
        client.append("INBOX", message("INBOX", 510), msg_time=BASE_DATE)
    assert sync_ok(setup).copied == 1
    after = snapshot(destination, du)
    assert RENAMED_TO in after and RENAMED_FROM not in after, sorted(after)
    assert differences(snapshot(source, su), after) == []
    assert sync_ok(setup).copied == 0
    verify_ok(setup)


@pytest.mark.parametrize(("source_kind", "destination_kind"), pair_params())
def test_uidvalidity_change_on_either_side(lab_server: LabServerOf, source_kind: str, destination_kind: str) -> None:
    source, destination = lab_server(source_kind), lab_server(destination_kind)
    su, du = source.add_user(), destination.add_user()
    lists = [SeedMessage(message("Lists", 200 + n), ("\\Seen",), BASE_DATE) for n in range(3)]
    seed_logical(source, su, {"INBOX": [SeedMessage(message("INBOX", 199))], "Lists": lists})
    setup = make_setup(source, su, destination, du)
    sync_ok(setup)

    for server, user in ((source, su), (destination, du)):
        name = server.folder_name("Lists")
        with connected(server, user) as client:
            before = client.folder_status(name, ["UIDVALIDITY"])[b"UIDVALIDITY"]
            client.delete_folder(name)
            seed(client, name, lists)
            assert client.folder_status(name, ["UIDVALIDITY"])[b"UIDVALIDITY"] != before
        assert sync_ok(setup).copied == 0  # re-mapped by fingerprint, not copied again
        assert differences(snapshot(source, su), snapshot(destination, du)) == []
    verify_ok(setup)


def create_special_use(server: LabServer, client: IMAPClient, logical: str, use: str) -> None:
    """Create a folder with a special-use attribute where the server lets a client set one (Cyrus:
    CREATE ... (USE (...))); Dovecot's lab servers have Sent/Drafts/Trash/Junk/Archive by configuration;
    Courier has no SPECIAL-USE (the folder only has the name)."""
    name = server.folder_name(logical)
    if b"CREATE-SPECIAL-USE" in client.capabilities():
        typ, data = client._imap._simple_command("CREATE", client._imap._quote(name), f"(USE ({use}))")
        assert typ == "OK", data
    else:
        client.create_folder(name)
    client.subscribe_folder(name)


@pytest.mark.parametrize(("source_kind", "destination_kind"), pair_params())
def test_special_use_automap(lab_server: LabServerOf, source_kind: str, destination_kind: str) -> None:
    """The source's sent folder ("Sent Messages", \\Sent where the server can say so) lands in the
    destination's existing "Sent"; "Drafts" is created with its name."""
    source, destination = lab_server(source_kind), lab_server(destination_kind)
    su, du = source.add_user(), destination.add_user()
    source_sent = "Sent" if source_kind == "dovecot" else "Sent Messages"  # Dovecot: \Sent is bound to "Sent"
    with connected(source, su) as client:
        create_special_use(source, client, source_sent, "\\Sent")
        create_special_use(source, client, "Drafts", "\\Drafts")
        seed(client, source.folder_name(source_sent), [SeedMessage(message("Sent", 300 + n)) for n in range(2)])
        seed(client, source.folder_name("Drafts"), [SeedMessage(message("Drafts", 310), ("\\Draft",))])
    with connected(destination, du) as client:
        create_special_use(destination, client, "Sent", "\\Sent")
    setup = make_setup(source, su, destination, du)
    sync_ok(setup)
    copy = snapshot(destination, du)
    assert len(copy.get("Sent", [])) == 2, sorted(copy)
    assert len(copy.get("Drafts", [])) == 1, sorted(copy)
    assert source_sent == "Sent" or "Sent Messages" not in copy
    verify_ok(setup)
    assert sync_ok(setup).copied == 0


@pytest.mark.parametrize(
    ("source_kind", "destination_kind"),
    pair_params(),
)
def test_8bit_header_bytes_are_kept_or_reported_as_altered(
    lab_server: LabServerOf, source_kind: str, destination_kind: str
) -> None:
    """Raw UTF-8 in headers: kept byte for byte, or -- where the destination rewrites it (Cyrus'
    munge8bit) -- reported as altered by the destination server in the pass and by verify."""
    source, destination = lab_server(source_kind), lab_server(destination_kind)
    su, du = source.add_user(), destination.add_user()
    seed_logical(source, su, {"INBOX": [SeedMessage(header_8bit_message()), SeedMessage(message("INBOX", 400))]})
    setup = make_setup(source, su, destination, du)
    result = setup.run("sync")
    output = result.stdout + result.stderr
    source_copy, destination_copy = snapshot(source, su), snapshot(destination, du)
    if not differences(source_copy, destination_copy):
        assert result.returncode == 0, output
        run_ok(setup, "verify")
        return
    assert "altered" in output, f"the destination changed the bytes but the pass did not say so:\n{output}"
    checked = setup.run("verify")
    assert checked.returncode != 0 and "altered" in checked.stdout + checked.stderr, checked.stdout


#: With a Dovecot destination, sync keeps the two folders apart but verify merges them ("Drafts +
#: Entwürfe" -> Drafts: 2 missing): sync does not see Dovecot's \\Drafts (LIST-STATUS without SPECIAL-USE),
#: verify's LIST does.


@pytest.mark.parametrize(("source_kind", "destination_kind"), pair_params())
def test_automap_never_merges_two_source_folders(
    lab_server: LabServerOf, source_kind: str, destination_kind: str
) -> None:
    """A source with a drafts folder and another folder whose name is a well-known drafts name
    ("Entwürfe"): the second keeps its own name; verify agrees right after the pass."""
    source, destination = lab_server(source_kind), lab_server(destination_kind)
    su, du = source.add_user(), destination.add_user()
    with connected(source, su) as client:
        create_special_use(source, client, "Drafts", "\\Drafts")
        seed(client, source.folder_name("Drafts"), [SeedMessage(message("Drafts", 600), ("\\Draft",))])
        seed(client, source.folder_name("Entwürfe"), [SeedMessage(message("Entwürfe", 601 + n)) for n in range(2)])
    setup = make_setup(source, su, destination, du)
    sync_ok(setup)
    copy = snapshot(destination, du)
    assert len(copy.get("Drafts", [])) == 1 and len(copy.get("Entwürfe", [])) == 2, {k: len(v) for k, v in copy.items()}
    verify_ok(setup)
