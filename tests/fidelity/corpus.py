"""The fidelity corpus: real SQL this project did not write, fetched from Debian at test time.

Each item names the Debian packages it comes from (exact versions, and the SHA-256 of each
``.deb`` as observed when the item was chosen), the files inside them in the order their
own install scripts load them, and the few edits needed to apply them to one session
database (documented per item). Nothing of their content is in this repository: the
packages are fetched with ``apt-get download`` into the cache directory
(``$CLAUDE_DB_CORPUS_CACHE``, default ``~/.cache/claude-db-tests/corpus``) and unpacked
with ``dpkg-deb -x``. A package that cannot be fetched or whose checksum differs is an
error (the test fails, never skips).

``python tests/fidelity/corpus.py [NAME...]`` fetches and builds the items (all by default)
and prints where their SQL files are.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_RELEASE = "bookworm"


class CorpusUnavailable(Exception):
    """A corpus package could not be fetched or is not the one recorded."""


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    sha256: str  # of the .deb, as observed when the item was chosen

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class CorpusItem:
    name: str
    engine: str  # "postgres" or "mysql"
    packages: tuple[DebianPackage, ...]
    files: tuple[str, ...]  # inside the unpacked packages, in load order; .gz are decompressed
    what: str  # what it exercises, for the README and the test ids' readers
    #: the documented edits: (the files' text, the unpacked packages) -> the text to apply
    edit: Callable[[str, list[Path]], str] = field(default=lambda text, roots: text)
    slow: bool = False

    def sql(self, cache: Path | None = None) -> Path:
        """The item's SQL as one file (built once in the cache)."""
        return build(self, cache or cache_dir())


# -- the items ------------------------------------------------------------------------------

AWL = DebianPackage("libawl-php", "0.64-1",
                    "6cd09b82a938d73b7dd09f5ee310a8c657921cc4513e7f9db406c6e70011ad63")
DAVICAL = DebianPackage("davical", "1.1.12-2",
                        "1dfaf4d822cfb300c596fe430b4c6f0d8c83a79782d0053c119474ab64c292d0")
LEDGERSMB = DebianPackage("ledgersmb", "1.6.33+ds-2.1",
                          "3ee14f6a20877d033b9e8a6c90d9d964b1cfd8ac9b3cef959ec247d53d2e2946")
ZABBIX_PGSQL = DebianPackage("zabbix-server-pgsql", "1:6.0.14+dfsg-1+b1",
                             "22409d687e33f64eb70ad52269f570ddb26c2844da0e252cfe15e5a9111a0efa")
ZABBIX_MYSQL = DebianPackage("zabbix-server-mysql", "1:6.0.14+dfsg-1+b1",
                             "a0db9bda0beced853287d52cd1bdd1a0d85399038293a58bbc3c441ca02113d9")
ZONEMINDER = DebianPackage("zoneminder", "1.36.33+dfsg1-1",
                           "73c76e2b42c88a890eaf82a2a52124e482d1b5016044a95f4e694e587c6a9299")

DAVICAL_DBA = "usr/share/davical/dba"
LSMB_SQL = "usr/share/ledgersmb/sql"
# The first modules of sql/modules/LOADORDER: the later ones need tables that sql/changes
# adds, which LedgerSMB's Perl installer applies one by one with failures tolerated.
LSMB_MODULES = ("Settings", "Util", "App_Module", "Menu", "Entity", "Drafts", "Account",
                "Session")
ZM_DB = "usr/share/zoneminder/db"


def _zoneminder(text: str, roots: list[Path]) -> str:
    """zm_create.sql creates and uses its own database `zm`, and `source`s the triggers
    file: apply it to the session's database, with the triggers file inline."""
    triggers = (roots[0] / ZM_DB / "triggers.sql").read_text()
    text = re.sub(r"^source /usr/share/zoneminder/db/triggers\.sql\s*$", lambda _: triggers,
                  text, flags=re.MULTILINE)
    text = re.sub(r"^CREATE DATABASE .*`zm`;\n", "", text, flags=re.MULTILINE)
    text = re.sub(r"^USE `zm`;\n", "", text, flags=re.MULTILINE)
    return text


CORPUS: tuple[CorpusItem, ...] = (
    CorpusItem(
        "davical", "postgres", (AWL, DAVICAL),
        (
            "usr/share/awl/dba/awl-tables.sql",
            "usr/share/awl/dba/schema-management.sql",
            f"{DAVICAL_DBA}/davical.sql",
            f"{DAVICAL_DBA}/caldav_functions.sql",
            f"{DAVICAL_DBA}/rrule_functions.sql",
            f"{DAVICAL_DBA}/views/dav_principal.sql",
            f"{DAVICAL_DBA}/base-data.sql",
            f"{DAVICAL_DBA}/supported_locales.sql",
        ),
        "DAViCal's CalDAV server schema: PL/pgSQL and SQL functions, triggers, views, "
        "domains, sequences, base data, non-ASCII locale names",
    ),
    CorpusItem(
        "ledgersmb", "postgres", (LEDGERSMB,),
        (
            f"{LSMB_SQL}/Pg-database.sql",
            *(f"{LSMB_SQL}/modules/{module}.sql" for module in LSMB_MODULES),
            f"{LSMB_SQL}/coa/de/chart/General.sql",
        ),
        "LedgerSMB's accounting schema: COPY blocks, composite types, an aggregate, ~100 "
        "functions, triggers, views, comments, grants, its own BEGIN/COMMIT, the German "
        "chart of accounts (the first modules of its LOADORDER: the later ones need "
        "sql/changes, which its installer applies with failures tolerated)",
        slow=True,
    ),
    CorpusItem(
        "zabbix-pgsql", "postgres", (ZABBIX_PGSQL,),
        tuple(f"usr/share/zabbix-server-pgsql/{name}.sql.gz"
              for name in ("schema", "images", "data")),
        "Zabbix 6.0's PostgreSQL schema and data: ~170 tables, bytea images, many rows",
        slow=True,
    ),
    CorpusItem(
        "zoneminder", "mysql", (ZONEMINDER,),
        (f"{ZM_DB}/zm_create.sql",),
        "ZoneMinder's schema: triggers (DELIMITER), ENUM and SET columns, long escaped "
        "text, many INSERTs; CREATE DATABASE/USE removed, `source` of triggers.sql inlined",
        edit=_zoneminder,
    ),
    CorpusItem(
        "zabbix-mysql", "mysql", (ZABBIX_MYSQL,),
        tuple(f"usr/share/zabbix-server-mysql/{name}.sql.gz"
              for name in ("schema", "images", "data")),
        "Zabbix 6.0's MySQL schema and data: ~170 tables, blob images, many rows",
        slow=True,
    ),
)


def item(name: str) -> CorpusItem:
    return next(each for each in CORPUS if each.name == name)


# -- fetching -------------------------------------------------------------------------------


def cache_dir() -> Path:
    configured = os.environ.get("CLAUDE_DB_CORPUS_CACHE")
    return Path(configured) if configured else Path.home() / ".cache/claude-db-tests/corpus"


def fetch(package: DebianPackage, cache: Path) -> Path:
    """The package unpacked in the cache: ``apt-get download``, checked, ``dpkg-deb -x``."""
    cache.mkdir(parents=True, exist_ok=True)
    # one download at a time: parallel test workers fetch the same packages into one directory
    with open(cache / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fetch(package, cache)


def _fetch(package: DebianPackage, cache: Path) -> Path:
    unpacked = cache / "packages" / f"{package.name}_{package.version.replace(':', '%3a')}"
    if (unpacked / ".complete").exists():
        return unpacked
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    os.chmod(debs, 0o755)  # apt's _apt user downloads into it when we are root
    proc = _download(package, debs)
    if proc.returncode != 0 and os.geteuid() == 0:  # a new machine: apt has no lists yet
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=600)
        proc = _download(package, debs)
    found = sorted(debs.glob(f"{package.name}_*.deb"))
    if proc.returncode != 0 or not found:
        raise CorpusUnavailable(
            f"cannot fetch Debian package {package.spec} for the fidelity corpus "
            f"(apt-get download: {proc.stderr.strip() or proc.stdout.strip()}); it comes from "
            f"Debian {DEBIAN_RELEASE}'s archive: run `apt-get update` on a Debian "
            f"{DEBIAN_RELEASE} machine"
        )
    deb = next(path for path in found if _version_in(path) == package.version)
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise CorpusUnavailable(f"{deb.name} has SHA-256 {digest}, not the recorded "
                                f"{package.sha256}: not the package the corpus was chosen from")
    partial = Path(tempfile.mkdtemp(prefix="unpacking-", dir=cache))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True, timeout=600)
    (partial / ".complete").touch()
    unpacked.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(unpacked)
    except OSError:  # another run unpacked it meanwhile
        shutil.rmtree(partial)
        if not (unpacked / ".complete").exists():
            raise
    return unpacked


def _download(package: DebianPackage, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", "download", package.spec], cwd=directory,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


def _version_in(deb: Path) -> str:
    return deb.name.split("_")[1].replace("%3a", ":")


def build(corpus_item: CorpusItem, cache: Path) -> Path:
    """Concatenate the item's files (in load order, edited) into one SQL file."""
    # named by its recipe: a changed recipe builds anew
    recipe = repr((corpus_item.packages, corpus_item.files, inspect.getsource(corpus_item.edit)))
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    target = cache / "sql" / f"{corpus_item.name}-{digest}.sql"
    if target.exists():
        return target
    roots = [fetch(package, cache) for package in corpus_item.packages]
    parts = []
    for relative in corpus_item.files:
        path = next((root / relative for root in roots if (root / relative).exists()), None)
        if path is None:
            raise CorpusUnavailable(f"{relative} is not in {corpus_item.packages}")
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        parts.append(data.decode())
    text = corpus_item.edit("\n".join(parts), roots)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.rename(target)
    return target


if __name__ == "__main__":
    for each in CORPUS:
        if len(sys.argv) == 1 or each.name in sys.argv[1:]:
            print(each.name, each.sql())
