#!/usr/bin/env bash
# Turns a container of the Debian test base into a stand-in for the official `mongo`
# image: SecantusDB (a MongoDB-wire-protocol server from PyPI) behind an entrypoint with
# the official image's environment contract, plus MongoDB's shell (mongosh, from npm, on
# the host's Node.js: Debian 12's Node 18 is too old for current mongosh).
# Run by tests/test_mongo_docker.py with its build context mounted at /ctx (wheels/, node,
# mongosh/node_modules/, docker-entrypoint.sh); the container is then committed with
# ENTRYPOINT docker-entrypoint.sh, CMD mongod, EXPOSE 27017, VOLUME /data/db.
set -Eeuxo pipefail

apt-get update
apt-get install -y --no-install-recommends python3 python3-venv libstdc++6
rm -rf /var/lib/apt/lists/*

# Containers may not reach PyPI: the wheels were built on the host (same Python 3.11).
python3 -m venv /opt/standin
/opt/standin/bin/pip install --quiet --no-index --find-links /ctx/wheels SecantusDB

install -m 755 /ctx/node /usr/local/bin/node
cp -a /ctx/mongosh /opt/mongosh
ln -s /opt/mongosh/node_modules/.bin/mongosh /usr/local/bin/mongosh
mongosh --version

groupadd --system mongodb
useradd --system --gid mongodb --create-home --home-dir /var/lib/mongodb mongodb
mkdir -p /data/db /docker-entrypoint-initdb.d
chown mongodb:mongodb /data/db
install -m 755 /ctx/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
