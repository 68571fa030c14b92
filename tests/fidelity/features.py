# ruff: noqa: E501  (COPY rows are lines of the SQL, tab-separated, as long as they are)
"""Two small databases this project wrote, for what the real corpus does not reach.

The corpus (corpus.py) is real SQL from elsewhere; none of it has large objects, default
privileges, database settings, row-level security, several schemas with extensions, or
(for MariaDB) system-versioned tables, sequences and events. These files have each such
object once, with non-ASCII names and text, and nothing that depends on the clock, so
they load the same every time.
"""

from __future__ import annotations

#: roles the PostgreSQL file uses (it makes them itself where it may)
POSTGRES_ROLES = ("fidelity_reader",)

POSTGRES = r"""
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fidelity_reader') THEN
        CREATE ROLE fidelity_reader NOLOGIN;
    END IF;
END $$;
CREATE SCHEMA inventory;
CREATE SCHEMA "Grüße";
CREATE TYPE inventory.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN inventory.positive AS int CHECK (VALUE > 0);
CREATE TABLE inventory.item (
    id serial PRIMARY KEY,
    name citext NOT NULL UNIQUE,
    attrs hstore,
    mood inventory.mood DEFAULT 'ok',
    qty inventory.positive,
    note text COLLATE "C",
    span tsrange,
    tags text[],
    price numeric(10, 2) CHECK (price >= 0),
    stamp timestamptz
);
COPY inventory.item (name, attrs, mood, qty, note, span, tags, price, stamp) FROM stdin;
Käse	"origin"=>"Schweiz", "age"=>"12"	happy	3	tab\there, newline\nthere	["2024-01-01 00:00:00","2024-02-01 00:00:00")	{a,"b c"}	12.50	2024-05-01 12:00:00+00
日本酒	\N	ok	1	\N	empty	{}	0.00	2024-05-02 08:30:00+00
"quoted" \\ backslash	"k"=>NULL	sad	\N	✓ ü ß Ω	\N	\N	\N	\N
\.
CREATE TABLE "Grüße"."Wörter" (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wort text NOT NULL,
    doc jsonb,
    länge int GENERATED ALWAYS AS (length(wort)) STORED,
    item int REFERENCES inventory.item (id) ON DELETE CASCADE DEFERRABLE
);
INSERT INTO "Grüße"."Wörter" (wort, doc, item)
VALUES ('Grüße', '{"a": [1, 2, {"b": null}], "ü": "✓"}', 1), ('こんにちは', NULL, 2);
CREATE TABLE inventory.log (at date NOT NULL, item int, what text) PARTITION BY RANGE (at);
CREATE TABLE inventory.log_2024 PARTITION OF inventory.log
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE inventory.log_rest PARTITION OF inventory.log DEFAULT;
INSERT INTO inventory.log VALUES ('2024-03-01', 1, 'in'), ('2030-01-01', 2, 'later');
CREATE UNLOGGED TABLE inventory.scratch (k text PRIMARY KEY, v bytea) WITH (fillfactor = 70);
INSERT INTO inventory.scratch VALUES ('bin', '\x00ff10'::bytea);
CREATE INDEX item_attrs ON inventory.item USING gin (attrs);
CREATE INDEX item_lower_note ON inventory.item (lower(note)) WHERE note IS NOT NULL;
CREATE VIEW inventory.cheap AS SELECT id, name FROM inventory.item WHERE price < 10
    WITH CHECK OPTION;
CREATE MATERIALIZED VIEW "Grüße".wortzahl AS SELECT count(*) AS n FROM "Grüße"."Wörter";
CREATE FUNCTION inventory.shout(t text) RETURNS text LANGUAGE sql IMMUTABLE
    RETURN upper(t) || '!';
CREATE FUNCTION inventory.no_negative() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.price < 0 THEN RAISE EXCEPTION 'négatif'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER item_price BEFORE INSERT OR UPDATE OF price ON inventory.item
    FOR EACH ROW EXECUTE FUNCTION inventory.no_negative();
CREATE PROCEDURE inventory.restock(n int) LANGUAGE sql
    AS $$ UPDATE inventory.item SET qty = qty + n WHERE qty IS NOT NULL $$;
CREATE AGGREGATE inventory.concat_all(text) (SFUNC = textcat, STYPE = text, INITCOND = '');
CREATE SEQUENCE inventory.tickets START 7 INCREMENT 3;
SELECT nextval('inventory.tickets'), nextval('inventory.tickets');
SELECT setval('inventory.item_id_seq', 1000);
ALTER TABLE inventory.item ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON inventory.item FOR SELECT TO fidelity_reader USING (qty > 0);
COMMENT ON SCHEMA inventory IS 'stock ✓';
COMMENT ON TABLE inventory.item IS 'Artikel — items';
COMMENT ON COLUMN "Grüße"."Wörter".wort IS 'das Wort';
COMMENT ON FUNCTION inventory.shout(text) IS 'loud';
COMMENT ON TYPE inventory.mood IS 'feelings';
GRANT USAGE ON SCHEMA inventory TO fidelity_reader;
GRANT SELECT ON inventory.item TO fidelity_reader;
GRANT SELECT (wort), UPDATE (doc) ON "Grüße"."Wörter" TO fidelity_reader;
REVOKE EXECUTE ON FUNCTION inventory.shout(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inventory.shout(text) TO fidelity_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA inventory GRANT SELECT ON TABLES TO fidelity_reader;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
SELECT lo_from_bytea(424242, convert_to('a large object ✓', 'UTF8'));
GRANT SELECT ON LARGE OBJECT 424242 TO fidelity_reader;
COMMENT ON LARGE OBJECT 424242 IS 'blob';
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET work_mem = %L', current_database(), '8MB');
    EXECUTE format('ALTER DATABASE %I SET search_path = inventory, public', current_database());
    EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), 'fidelity ✓');
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO fidelity_reader',
                   current_database());
END $$;
"""

MYSQL = r"""
CREATE USER IF NOT EXISTS 'fidelity_reader'@'%';
ALTER DATABASE COMMENT = 'fidelity ✓' CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE TABLE prices (
    id INT PRIMARY KEY,
    item VARCHAR(50) NOT NULL COMMENT 'what ✓',
    price DECIMAL(8, 2)
) COMMENT = 'prices, with their history' WITH SYSTEM VERSIONING;
INSERT INTO prices VALUES (1, 'Käse', 12.50), (2, '日本酒', 30.00), (3, 'pain', 2.00);
UPDATE prices SET price = 13.00 WHERE id = 1;
DELETE FROM prices WHERE id = 2;
CREATE TABLE items (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    mood ENUM('sad', 'ok', 'happy') DEFAULT 'ok',
    flags SET('new', 'sale'),
    doc JSON,
    raw VARBINARY(16),
    name_length INT AS (CHAR_LENGTH(name)) PERSISTENT,
    FULLTEXT KEY (name),
    CONSTRAINT known_mood CHECK (mood <> 'sad')
) ENGINE = InnoDB AUTO_INCREMENT = 100;
INSERT INTO items (name, mood, flags, doc, raw) VALUES
    ('Grüße ✓ 😀', 'happy', 'new,sale', '{"a": [1, null]}', UNHEX('00FF10')),
    ('tab\there ''quoted'' \\ back', NULL, '', NULL, NULL);
CREATE TABLE orders (
    id INT PRIMARY KEY,
    item INT,
    FOREIGN KEY (item) REFERENCES items (id) ON DELETE CASCADE
);
INSERT INTO orders VALUES (1, 100);
CREATE SEQUENCE tickets START WITH 7 INCREMENT BY 3;
SELECT NEXTVAL(tickets), NEXTVAL(tickets);
CREATE VIEW cheap AS SELECT id, item FROM prices WHERE price < 10;
CREATE FUNCTION shout(t TEXT) RETURNS TEXT DETERMINISTIC RETURN CONCAT(UPPER(t), '!');
DELIMITER //
CREATE PROCEDURE restock(IN n INT)
BEGIN
    UPDATE items SET name = CONCAT(name, '+') WHERE id > n;
END//
CREATE TRIGGER items_name BEFORE INSERT ON items FOR EACH ROW
BEGIN
    SET NEW.name = TRIM(NEW.name);
END//
DELIMITER ;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00'
    DISABLE COMMENT 'not now' DO DELETE FROM orders WHERE id < 0;
GRANT SELECT ON prices TO 'fidelity_reader'@'%';
GRANT SELECT (id, name) ON items TO 'fidelity_reader'@'%';
"""
