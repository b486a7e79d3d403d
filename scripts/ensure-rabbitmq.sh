#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 for the tests: starts it where it is installed
# but not running, installs Debian's rabbitmq-server where it is missing. Exits non-zero when neither
# works, so a test run never silently skips the RabbitMQ tests.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "RabbitMQ is not installed and this is not root: install rabbitmq-server, or start a broker on 127.0.0.1:5672" >&2
    exit 1
  fi
  echo "installing rabbitmq-server" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
fi

echo "starting rabbitmq-server" >&2
if command -v service >/dev/null 2>&1 && service rabbitmq-server start >/dev/null 2>&1; then
  :
else
  rabbitmq-server -detached
fi

for _ in $(seq 1 90); do
  if port_open; then
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not come up on 127.0.0.1:5672 within 90 s" >&2
exit 1
