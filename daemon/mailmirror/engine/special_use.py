"""Special-use folders (RFC 6154) for automap: the uses it follows, and the well-known names that mark a
folder's use when the server gives no attribute (in several languages, compared case-insensitively)."""

from __future__ import annotations

from mailmirror.imap.types import Folder

# The RFC 6154 special uses automap follows (not \Flagged: a virtual view, not a place for messages).
AUTOMAP_USES = ("\\Sent", "\\Trash", "\\Junk", "\\Drafts", "\\Archive", "\\All")

WELL_KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    "\\Sent": (
        "Sent",
        "Sent Messages",
        "Sent Items",
        "Sent Mail",
        "[Gmail]/Sent Mail",
        "[Google Mail]/Sent Mail",
        "Gesendete Objekte",
        "Gesendete Elemente",
        "Gesendet",
        "[Google Mail]/Gesendet",
        "Éléments envoyés",
        "Envoyés",
        "Messages envoyés",
        "Enviados",
        "Elementos enviados",
        "Itens enviados",
        "Posta inviata",
        "Inviata",
        "Verzonden items",
        "Verzonden",
        "Отправленные",
    ),
    "\\Trash": (
        "Trash",
        "Deleted Items",
        "Deleted Messages",
        "Bin",
        "[Gmail]/Trash",
        "[Gmail]/Bin",
        "[Google Mail]/Trash",
        "[Google Mail]/Bin",
        "[Google Mail]/Papierkorb",
        "Gelöschte Objekte",
        "Gelöschte Elemente",
        "Papierkorb",
        "Éléments supprimés",
        "Corbeille",
        "Papelera",
        "Elementos eliminados",
        "Itens excluídos",
        "Lixeira",
        "Lixo",
        "Cestino",
        "Posta eliminata",
        "Verwijderde items",
        "Prullenbak",
        "Удаленные",
        "Удалённые",
        "Корзина",
    ),
    "\\Junk": (
        "Junk",
        "Junk E-mail",
        "Junk Email",
        "Junk Mail",
        "Spam",
        "[Gmail]/Spam",
        "[Google Mail]/Spam",
        "Junk-E-Mail",
        "Spam-Verdacht",
        "Courrier indésirable",
        "Pourriel",
        "Correo no deseado",
        "Lixo eletrônico",
        "Posta indesiderata",
        "Ongewenste e-mail",
        "Спам",
    ),
    "\\Drafts": (
        "Drafts",
        "[Gmail]/Drafts",
        "[Google Mail]/Drafts",
        "[Google Mail]/Entwürfe",
        "Entwürfe",
        "Brouillons",
        "Borradores",
        "Rascunhos",
        "Bozze",
        "Concepten",
        "Черновики",
    ),
    "\\Archive": ("Archive", "Archives", "Archiv", "Archivio", "Archivo", "Arquivo", "Archief", "Архив"),
    "\\All": ("[Gmail]/All Mail", "[Google Mail]/All Mail", "[Google Mail]/Alle Nachrichten", "All Mail"),
}

_USE_BY_NAME: dict[str, str] = {name.casefold(): use for use, names in WELL_KNOWN_NAMES.items() for name in names}


def use_by_name(name: str) -> str | None:
    """The special use a well-known folder name stands for (case-insensitively), if any."""
    return _USE_BY_NAME.get(name.casefold())


def attribute_use(folder: Folder) -> str | None:
    """The special use automap follows from the folder's RFC 6154 attribute, if it has one."""
    lowered = {flag.lower() for flag in folder.flags}
    return next((use for use in AUTOMAP_USES if use.lower() in lowered), None)


def special_use_of(folder: Folder, name: str) -> str | None:
    """The special use automap follows: the folder's RFC 6154 attribute, else its well-known name."""
    return attribute_use(folder) or use_by_name(name)
