"""Scale-out: split one config's pairs over N processes (`--shard K/N`), each with its own state database.

A pair belongs to the shard with the highest rendezvous score (highest random weight hashing) of
``hash(shard, pair name)``. So every pair has exactly one shard, the assignment depends on nothing but the
pair's name and N (not on the order or number of pairs in the file: restarts and config edits keep it),
and going from N to N+1 shards moves only the pairs the new shard wins, about 1/(N+1) of them, each from
wherever it was. A moved pair starts in its new shard's fresh state database; its first pass there
recognises what is already on the destination by message identity (Message-ID, Date, size) and copies
nothing twice.

K comes from ``--shard K/N``, else from the environment: ``MAILMIRROR_SHARD=K/N``, or
``MAILMIRROR_SHARD=K`` with ``MAILMIRROR_SHARDS=N``, or, with only ``MAILMIRROR_SHARDS=N``, the ordinal at
the end of ``$POD_NAME`` or ``$HOSTNAME`` (a StatefulSet's pod ``mailmirror-3`` is shard 3).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mailmirror.config.config_file import Config
from mailmirror.errors import UsageError

SHARD_VARIABLE = "MAILMIRROR_SHARD"
SHARDS_VARIABLE = "MAILMIRROR_SHARDS"
LISTEN_VARIABLE = "MAILMIRROR_METRICS_LISTEN"
POD_NAME_VARIABLES = ("POD_NAME", "HOSTNAME")
MAX_SHARDS = 10_000
_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 ≤ index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, pair_name: str) -> bool:
        return shard_of(pair_name, self.count) == self.index

    def state_path(self, path: Path) -> Path:
        """This shard's state database beside the configured one: ``state.db`` → ``state.shard-2-of-4.db``."""
        return path.with_name(f"{path.stem}.shard-{self.index}-of-{self.count}{path.suffix}")


def _score(shard_index: int, pair_name: str) -> int:
    digest = hashlib.blake2b(f"{shard_index}\0{pair_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(pair_name: str, count: int) -> int:
    """The shard (0..count-1) that owns ``pair_name`` among ``count`` shards: rendezvous hashing."""
    return max(range(count), key=lambda index: _score(index, pair_name))


def assignment(pair_names: Iterable[str], count: int) -> dict[str, int]:
    """Every pair → its shard."""
    return {name: shard_of(name, count) for name in pair_names}


def parse_shard(text: str, origin: str = "--shard") -> Shard:
    """``K/N`` → Shard(K, N); anything else is a usage error naming where it came from."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UsageError(f"{origin}: {text!r} is not K/N (shard K of N, K from 0 to N-1, e.g. 2/4)")
    return _checked(int(match.group(1)), int(match.group(2)), origin)


def _checked(index: int, count: int, origin: str) -> Shard:
    if not 1 <= count <= MAX_SHARDS:
        raise UsageError(f"{origin}: the number of shards must be from 1 to {MAX_SHARDS}, not {count}")
    if not 0 <= index < count:
        raise UsageError(f"{origin}: shard {index} does not exist among {count} (K goes from 0 to {count - 1})")
    return Shard(index, count)


def _count_from(environ: Mapping[str, str]) -> int:
    text = environ[SHARDS_VARIABLE].strip()
    if not text.isdigit():
        raise UsageError(f"${SHARDS_VARIABLE}: {text!r} is not a number of shards")
    return int(text)


def shard_from_environment(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard the environment names (see the module docstring), or None when it names none."""
    environ = os.environ if environ is None else environ
    given = environ.get(SHARD_VARIABLE, "").strip()
    if "/" in given:
        return parse_shard(given, f"${SHARD_VARIABLE}")
    if given:
        if SHARDS_VARIABLE not in environ:
            raise UsageError(f"${SHARD_VARIABLE}={given} needs ${SHARDS_VARIABLE} (the number of shards), or K/N")
        if not given.isdigit():
            raise UsageError(f"${SHARD_VARIABLE}: {given!r} is not a shard number")
        return _checked(int(given), _count_from(environ), f"${SHARD_VARIABLE}")
    if SHARDS_VARIABLE not in environ:
        return None
    for variable in POD_NAME_VARIABLES:
        match = _ORDINAL.search(environ.get(variable, ""))
        if match is not None:
            return _checked(int(match.group(1)), _count_from(environ), f"${variable} ({environ[variable]})")
    raise UsageError(
        f"${SHARDS_VARIABLE} is set but no shard is named: set ${SHARD_VARIABLE}=K, or a pod name ending in "
        f"-K in ${POD_NAME_VARIABLES[0]}"
    )


def resolve_shard(option: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard`` if given, else the environment's shard, else None (one process does every pair)."""
    if option is not None:
        return parse_shard(option)
    return shard_from_environment(environ)


def shard_listen(listen: str, shard: Shard, environ: Mapping[str, str] | None = None) -> str:
    """The shard's metrics address: ``$MAILMIRROR_METRICS_LISTEN`` if set (one pod per shard: every pod on
    the same port), else metrics.listen with K added to its port (shards side by side on one machine;
    port 0 stays 0, a free port)."""
    environ = os.environ if environ is None else environ
    override = environ.get(LISTEN_VARIABLE, "").strip()
    if override:
        return override
    host, _, port = listen.rpartition(":")
    return listen if int(port) == 0 else f"{host}:{int(port) + shard.index}"


def apply_shard(config: Config, shard: Shard | None, environ: Mapping[str, str] | None = None) -> Config:
    """The config as shard ``shard`` sees it: only its pairs, its own state database and metrics address.
    ``None``: the config unchanged."""
    if shard is None:
        return config
    pairs = {name: pair for name, pair in config.pairs.items() if shard.owns(name)}
    state = config.state.model_copy(update={"path": shard.state_path(config.state.path)})
    metrics = config.metrics.model_copy(update={"listen": shard_listen(config.metrics.listen, shard, environ)})
    sharded = config.model_copy(update={"pairs": pairs, "state": state, "metrics": metrics})
    sharded._effective_pairs = {name: pair for name, pair in config.effective_pairs().items() if name in pairs}
    return sharded
