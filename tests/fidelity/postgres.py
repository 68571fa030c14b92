"""A PostgreSQL database's fingerprint, from its catalogs (psycopg, as an application connects).

Rows: per table (and materialized view), its row count and the MD5 of its rows' text in a
fixed order (sorted in the "C" collation). Catalog: what ``pg_dump`` and the snapshots must
bring back, each as the server itself prints it (``pg_get_functiondef``, ``pg_get_viewdef``,
``pg_get_triggerdef``, ``pg_get_constraintdef``...), never by OID but for large objects,
whose OIDs are their names. Objects of the system schemas are left out; the database's name
is not part of it, so two databases of one server can be compared.
"""

from __future__ import annotations

import re
from typing import Any

from fidelity.fingerprint import Fingerprint

USER_SCHEMA = "{n}.nspname NOT IN ('pg_catalog', 'information_schema') AND {n}.nspname !~ '^pg_'"
DATABASE_OID = "(SELECT oid FROM pg_database WHERE datname = current_database())"

CATALOG: dict[str, str] = {
    "database": """
        SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype,
               datconnlimit, datallowconn,
               ARRAY(SELECT unnest(datacl::text[]) ORDER BY 1),  -- a set: order is no state
               (SELECT description FROM pg_shdescription
                 WHERE objoid = d.oid AND classoid = 'pg_database'::regclass)
          FROM pg_database d WHERE datname = current_database()""",
    "database settings": f"""
        SELECT CASE setrole WHEN 0 THEN '' ELSE pg_get_userbyid(setrole) END, setconfig
          FROM pg_db_role_setting WHERE setdatabase = {DATABASE_OID}""",
    "default privileges": """
        SELECT pg_get_userbyid(defaclrole), defaclnamespace::regnamespace::text, defaclobjtype,
               defaclacl::text[]
          FROM pg_default_acl""",
    "schemas": f"""
        SELECT nspname, pg_get_userbyid(nspowner), nspacl::text[]
          FROM pg_namespace n WHERE {USER_SCHEMA.format(n="n")}""",
    "extensions": """
        SELECT extname, extversion, extnamespace::regnamespace::text, extrelocatable,
               ARRAY(SELECT c::regclass::text FROM unnest(extconfig) c), extcondition
          FROM pg_extension""",
    "relations": f"""
        SELECT c.oid::regclass::text, c.relkind, pg_get_userbyid(c.relowner), c.relpersistence,
               c.reloptions, c.relacl::text[], c.relrowsecurity, c.relforcerowsecurity,
               c.relreplident, pg_get_partkeydef(c.oid), pg_get_expr(c.relpartbound, c.oid),
               ARRAY(SELECT i.inhparent::regclass::text FROM pg_inherits i
                      WHERE i.inhrelid = c.oid ORDER BY i.inhseqno)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {USER_SCHEMA.format(n="n")}""",
    "columns": f"""
        SELECT c.oid::regclass::text,
               row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
               a.attgenerated, pg_get_expr(d.adbin, d.adrelid), co.collname, a.attacl::text[],
               a.attstorage, a.attstattarget, a.attislocal, a.attinhcount,
               -- but pg_attver, the server's own counter (Debian's 15.20 sets it)
               ARRAY(SELECT o FROM unnest(a.attoptions) o WHERE o !~ '^pg_attver=')
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
         WHERE {USER_SCHEMA.format(n="n")} AND a.attnum > 0 AND NOT a.attisdropped""",
    "types": f"""
        SELECT t.oid::regtype::text, t.typtype, pg_get_userbyid(t.typowner), t.typacl::text[],
               CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
               t.typdefault, t.typnotnull,
               ARRAY(SELECT enumlabel::text FROM pg_enum WHERE enumtypid = t.oid
                      ORDER BY enumsortorder),
               (SELECT format_type(rngsubtype, NULL) FROM pg_range WHERE rngtypid = t.oid)
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE {USER_SCHEMA.format(n="n")} AND t.typcategory <> 'A'
           AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')""",
    "functions": f"""
        SELECT p.oid::regprocedure::text, p.prokind, pg_get_userbyid(p.proowner),
               p.proacl::text[],
               CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE {USER_SCHEMA.format(n="n")}""",
    "aggregates": f"""
        SELECT a.aggfnoid::regprocedure::text, a.aggkind, a.aggtransfn::regprocedure::text,
               a.aggfinalfn::text, a.aggtranstype::regtype::text, a.agginitval,
               a.aggsortop::regoperator::text
          FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE {USER_SCHEMA.format(n="n")}""",
    "operators": f"""
        SELECT o.oid::regoperator::text, o.oprcode::regprocedure::text,
               pg_get_userbyid(o.oprowner)
          FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE {USER_SCHEMA.format(n="n")}""",
    "views": f"""
        SELECT c.oid::regclass::text, c.relkind, pg_get_viewdef(c.oid), c.relispopulated
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {USER_SCHEMA.format(n="n")} AND c.relkind IN ('v', 'm')""",
    "rules": """
        SELECT schemaname, tablename, rulename, definition FROM pg_rules
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')""",
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text[], cmd, qual,
               with_check
          FROM pg_policies""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
          FROM pg_trigger WHERE NOT tgisinternal""",
    "event triggers": """
        SELECT evtname, evtevent, evtfoid::regprocedure::text, evtenabled, evttags
          FROM pg_event_trigger""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
           AND schemaname !~ '^pg_'""",
    "constraints": f"""
        SELECT c.conrelid::regclass::text, c.contypid::regtype::text, c.conname, c.contype,
               pg_get_constraintdef(c.oid), c.condeferrable, c.condeferred, c.convalidated
          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE {USER_SCHEMA.format(n="n")}""",
    "sequences": """
        SELECT schemaname, sequencename, sequenceowner, data_type::text, start_value,
               min_value, max_value, increment_by, cycle, cache_size, last_value
          FROM pg_sequences""",
    "sequence owners": """
        SELECT s.oid::regclass::text, t.oid::regclass::text, a.attname, d.deptype
          FROM pg_depend d
          JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_class t ON t.oid = d.refobjid
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass""",
    "comments": """
        SELECT pg_describe_object(classoid, objoid, objsubid), description
          FROM pg_description WHERE objoid >= 16384""",
    "large objects": """
        SELECT m.oid::bigint, pg_get_userbyid(m.lomowner), m.lomacl::text[],
               md5(lo_get(m.oid))
          FROM pg_largeobject_metadata m""",
}

EXTRACT_FIELD = re.compile(r"\bEXTRACT\(\w+ FROM", re.IGNORECASE)

TABLES = """
    SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE {user_schema} AND c.relkind IN ('r', 'm') AND (c.relkind <> 'm' OR c.relispopulated)
""".format(user_schema=USER_SCHEMA.format(n="n"))


def fingerprint(url: str) -> Fingerprint:
    """The fingerprint of the database at ``url``."""
    import psycopg

    result: Fingerprint = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET search_path = ''")  # every name printed schema-qualified
        for section, query in CATALOG.items():
            result[section] = _sorted([tuple(_canonical(value) for value in row)
                                       for row in conn.execute(query).fetchall()])
        rows = []
        for (table,) in conn.execute(TABLES).fetchall():
            count, digest = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' "
                f"ORDER BY t::text COLLATE \"C\"), '')) FROM ONLY {table} t"
            ).fetchone() or (0, "")
            rows.append((table, count, digest))
        result["rows"] = _sorted(rows)
    return result


def _canonical(value: Any) -> Any:
    """``value`` without a difference of spelling only PostgreSQL's own printing makes.

    ``EXTRACT('YEAR' FROM x)`` is printed ``EXTRACT(YEAR FROM x)``, which reads back as
    ``'year'``: the same expression, printed differently after one dump and reload.
    """
    if not isinstance(value, str):
        return value
    return EXTRACT_FIELD.sub(lambda match: match.group(0).lower(), value)


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted((tuple(row) for row in rows), key=repr)
