#!/usr/bin/env bash
# Installs (Debian 12: PostgreSQL 15) and starts PostgreSQL, creates the role
# and database the tests use, and prints the URL for STATECAST_PG_URL.
# Idempotent and quiet; fast when everything is already there. Needs root.
set -euo pipefail
# Only the URL goes to standard output: everything else the tools print goes to
# standard error, so `$(bash .ci/postgres.sh)` is exactly the URL.
exec 3>&1 1>&2

role=statecast
password=statecast
db=statecast_test

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | grep -q "^$version main .* online"; then
    "$(dirname "$0")/pg-ctl" "$version" main start
fi
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.2
done

psql_admin() { su postgres -c "psql -X -q -v ON_ERROR_STOP=1 -d postgres $*" >/dev/null; }
if ! su postgres -c "psql -X -tA -d postgres -c \"SELECT 1 FROM pg_roles WHERE rolname = '$role'\"" | grep -q 1; then
    psql_admin "-c \"CREATE ROLE $role LOGIN PASSWORD '$password' CREATEDB\""
fi
if ! su postgres -c "psql -X -tA -d postgres -c \"SELECT 1 FROM pg_database WHERE datname = '$db'\"" | grep -q 1; then
    psql_admin "-c \"CREATE DATABASE $db OWNER $role\""
fi
url="postgres://$role:$password@127.0.0.1:5432/$db"
if ! psql "$url" -X -q -tA -c "SELECT 1" >/dev/null; then
    echo "postgres.sh: PostgreSQL is running but $url does not connect" >&2
    exit 1
fi
echo "$url" >&3
