#!/usr/bin/env bash
# Start the local PostgreSQL, RabbitMQ and MariaDB if they are installed but stopped, then wait
# for all three.
# A service that cannot be started is an error: tests never skip a missing service.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
mariadb_up() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }

wait_until() {  # wait_until NAME SECONDS CHECK...
    local name=$1 seconds=$2; shift 2
    for _ in $(seq "$seconds"); do "$@" && return 0; sleep 1; done
    echo "services: $name did not come up in ${seconds}s" >&2
    return 1
}

if ! pg_up; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_until PostgreSQL 60 pg_up

if ! rabbit_up; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached
fi
wait_until RabbitMQ 90 rabbit_up
# The port opens before the broker accepts logins; wait for full startup.
rabbitmqctl -q await_startup --timeout 90 >/dev/null

if ! mariadb_up; then
    echo "services: starting MariaDB"
    service mariadb start >/dev/null
fi
wait_until MariaDB 60 mariadb_up
echo "services: PostgreSQL, RabbitMQ and MariaDB are up"
