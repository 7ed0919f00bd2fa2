#!/usr/bin/env bash
# Make sure the servers the test suite talks to are reachable: PostgreSQL and Redis (RabbitMQ
# when installed). Start any that is installed but down; install any that is missing (Debian).
set -uo pipefail

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}

apt_install() {
  if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
  fi
}

# PostgreSQL
if ! port_open 5432; then
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    echo "installing PostgreSQL"; apt_install postgresql
  fi
  echo "starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  wait_port 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
fi
# Trust auth for the local postgres user is how this project's machines are set up; make sure
# a password-less TCP login works, else say how to fix it.
if command -v psql >/dev/null && ! psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then
  echo "cannot log in to PostgreSQL as postgres on 127.0.0.1 without a password;" \
       "set DATABASE_URL to a role that can create databases" >&2
fi

# Redis
if ! port_open 6379; then
  command -v redis-server >/dev/null || { echo "installing Redis"; apt_install redis-server; }
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 \
    || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
fi

# RabbitMQ is optional: the tests that need it skip with a reason when it is absent.
if ! port_open 5672 && command -v rabbitmq-server >/dev/null; then
  echo "starting RabbitMQ"; $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 || echo "RabbitMQ did not come up; its tests will skip" >&2
fi

# Chromium for the portal's end-to-end tests (Debian's package; Playwright drives it).
if ! command -v chromium >/dev/null; then
  echo "installing Chromium"; apt_install chromium || echo "chromium not installable; e2e tests will skip" >&2
fi
# faketime runs one process on a skewed clock in the clock-skew fault test (X12).
if ! command -v faketime >/dev/null; then
  echo "installing faketime"; apt_install faketime || echo "faketime not installable" >&2
fi

# Slurm (Debian's 22.05) and munge for tests/slurm: the tests start their own cluster in a
# temporary directory; here only the packages, with a policy-rc.d so that nothing starts.
# MariaDB's server backs the test cluster's slurmdbd (sacct).
if ! command -v slurmctld >/dev/null && ! [ -x /usr/sbin/slurmctld ] \
   || ! [ -x /usr/sbin/slurmdbd ] || ! [ -x /usr/sbin/munged ] || ! command -v sbatch >/dev/null \
   || ! [ -x /usr/sbin/mariadbd ]; then
  echo "installing Slurm and munge"
  policy_made=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d; policy_made=1
  fi
  if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      munge slurmctld slurmd slurm-client slurmdbd mariadb-server >/dev/null \
      || echo "Slurm not installable; tests/slurm will skip" >&2
  fi
  [ -n "$policy_made" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

# docker-compose (Debian's v1) validates docker-compose.yml without an engine.
if ! command -v docker-compose >/dev/null; then
  echo "installing docker-compose"; apt_install docker-compose || echo "docker-compose not installable" >&2
fi
echo "services ready: PostgreSQL 5432, Redis 6379$(port_open 5672 && echo ', RabbitMQ 5672')"
