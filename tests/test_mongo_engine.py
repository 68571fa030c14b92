"""The MongoDB engine (claude-db-mongo): what holds without a server.

The URL and environment contract, the container spec for the official ``mongo`` image,
discovery through the installed entry point, the local runtime without a ``mongod``, and
bad input that must be refused before any connection. Driver-level operations against a
MongoDB-wire-protocol server are in test_mongo_standin.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from claude_db import Credentials, Endpoint
from claude_db.errors import ExitCode
from claude_db.lifecycle import database_env
from claude_db.testing import CONTRACT_PASSWORD, Cli, assert_one_line_error
from claude_db_mongo import MongoEngine
from claude_db_mongo.local import find_mongod

CREDENTIALS = Credentials(user="r@ot:x", password=CONTRACT_PASSWORD, database="appdb")
ENDPOINT = Endpoint("db.example", 27017, CREDENTIALS)
# nothing listens on port 9 (discard) of the loopback interface
DOWN_URL = "mongodb://root:pw@127.0.0.1:9/appdb?authSource=admin"


def test_url_percent_encodes_credentials_and_names_the_auth_database() -> None:
    url = MongoEngine().url(ENDPOINT)
    assert url == (
        f"mongodb://{quote('r@ot:x', safe='')}:{quote(CONTRACT_PASSWORD, safe='')}"
        "@db.example:27017/appdb?authSource=admin"
    )
    parts = urlsplit(url)
    assert unquote(parts.username or "") == "r@ot:x"
    assert unquote(parts.password or "") == CONTRACT_PASSWORD
    assert (parts.hostname, parts.port, parts.path, parts.query) == (
        "db.example", 27017, "/appdb", "authSource=admin",
    )


def test_session_environment_has_generic_and_native_variables() -> None:
    engine = MongoEngine()
    env = database_env(engine, ENDPOINT)
    url = engine.url(ENDPOINT)
    assert env == {
        "DATABASE_URL": url,
        "DB_HOST": "db.example",
        "DB_PORT": "27017",
        "DB_USER": "r@ot:x",
        "DB_PASSWORD": CONTRACT_PASSWORD,
        "DB_NAME": "appdb",
        "MONGODB_URI": url,
        "MONGO_URL": url,
    }


def test_container_spec_follows_the_official_image() -> None:
    engine = MongoEngine()
    assert (engine.name, engine.url_schemes, engine.default_image, engine.default_port) == (
        "mongo", ("mongodb",), "mongo:8", 27017,
    )
    assert (engine.container_data_dir, engine.shell_name) == ("/data/db", "mongosh")
    assert engine.container_env(CREDENTIALS) == {
        "MONGO_INITDB_ROOT_USERNAME": "r@ot:x",
        "MONGO_INITDB_ROOT_PASSWORD": CONTRACT_PASSWORD,
        "MONGO_INITDB_DATABASE": "appdb",
    }


def test_shell_takes_the_url_from_the_environment_not_the_command_line() -> None:
    argv = MongoEngine().shell_argv(ENDPOINT)
    assert argv[0] == "mongosh"
    assert not any(CONTRACT_PASSWORD in arg or quote(CONTRACT_PASSWORD, safe="") in arg
                   for arg in argv)
    assert "process.env.MONGODB_URI" in argv[-1]


def test_installed_plugin_is_discovered(cli: Cli) -> None:
    result = cli("claude-db", "plugins", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["mongo"]["distribution"] == "claude-db-mongo"
    assert plugins["mongo"]["engines"] == ["mongo"]
    assert plugins["mongo"]["hooks"] == ["register_engines"]  # core adds its shell alias
    assert report["engines"]["mongo"] == "mongo"
    assert "mongosh" in cli("claude-db", "--help").stdout


def test_disabled_plugin_is_named_as_not_loaded(cli: Cli, state: Path) -> None:
    env = {"CLAUDE_DB_DISABLE_PLUGINS": "mongo"}
    listed = json.loads(cli("claude-db", "plugins", "--json", env=env).stdout)
    assert "mongo" not in listed["engines"]
    result = cli("claude-session", "start", "--db", "mongo", env=env)
    assert_one_line_error(result, ExitCode.USAGE)
    assert "engine 'mongo' is installed but not loaded" in result.stderr
    assert json.loads(cli("claude-session", "list", "--json").stdout) == []


def test_local_runtime_without_mongod_says_so_in_one_line(cli: Cli, state: Path) -> None:
    if find_mongod() is not None:
        pytest.fail("this machine has a mongod: this test expects none (MongoDB is not packaged "
                    "by Debian); test the local runtime with it instead")
    result = cli("claude-session", "start", "m1", "--db", "mongo", "--runtime", "local")
    assert_one_line_error(result, ExitCode.USAGE)
    assert "no mongod found" in result.stderr and "--runtime docker" in result.stderr
    assert json.loads(cli("claude-session", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("find users", "JSON command document"),
        ("{\"find\": ", "JSON command document"),
        ("[{\"find\": \"users\"}]", "JSON object naming a command"),
        ("{}", "JSON object naming a command"),
    ],
)
def test_query_that_is_not_a_command_document_is_a_usage_error(
    cli: Cli, query: str, words: str
) -> None:
    # refused before any MongoDB conversation: what listens there never answers one
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        url = f"mongodb://root:pw@127.0.0.1:{port}/appdb?authSource=admin"
        result = cli("claude-db", "query", query, env={"DATABASE_URL": url})
    assert_one_line_error(result, ExitCode.USAGE)
    assert words in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("query", '{"ping": 1}'),
        ("export", "-"),
        ("reset", "--yes"),
    ],
)
def test_server_down_is_not_running(cli: Cli, argv: tuple[str, ...]) -> None:
    # (reset's automatic snapshot is core's business: here the engine's own answer counts)
    env = {"DATABASE_URL": DOWN_URL, "CLAUDE_DB_AUTO_SNAPSHOTS": "0",
           "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE": "true"}
    result = cli("claude-db", *argv, env=env)
    assert_one_line_error(result, ExitCode.NOT_RUNNING)
    assert "127.0.0.1:9" in result.stderr
