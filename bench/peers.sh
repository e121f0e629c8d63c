#!/usr/bin/env bash
# Peers in the same run (issue 16): Mosquitto's QoS1 rate and ketenpost's, one after the
# other on this machine, and their ratio.
#
#   bash bench/peers.sh                    # 50,000 messages of 1 KiB each
#   MESSAGES=20000 bash bench/peers.sh
#   MOSQUITTO_ONLY=1 bash bench/peers.sh   # only Mosquitto's rate
#
# Mosquitto (Debian's package, installed here when missing: run as root or with sudo) runs
# on 127.0.0.1 with mTLS (a throw-away CA, server and client certificate made with
# openssl), persistence on, and QoS1 both ways: one publisher (`mosquitto_pub -l`, one
# 1 KiB message a line) and one subscriber (`mosquitto_sub -C`); the rate is end to end,
# from the publisher's start until the subscriber received every message. Then ketenpost's
# throughput scenario (`cargo bench -p ketenpost-broker --bench load -- throughput`, every
# check and a durable commit before each `accepted`) with the same number of messages.
#
# A benchmark, never a test: .ci/run does not call it. Everything it starts it stops.
set -euo pipefail

MESSAGES=${MESSAGES:-50000}
PORT=${PORT:-18883}
here=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v mosquitto >/dev/null || ! command -v mosquitto_pub >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
# The Debian package starts a system broker on 1883; this script uses its own on $PORT.
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

work=$(mktemp -d /tmp/ketenpost-peers-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- certificates: a CA, the broker (localhost, 127.0.0.1), one client ----------------
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=peers bench CA" -keyout ca.key -out ca.crt 2>/dev/null
for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$( [ $who = server ] && echo localhost || echo bench-client )" \
        -keyout $who.key -out $who.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > $who.ext
    openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
        -extfile $who.ext -out $who.crt 2>/dev/null
done
chmod 644 ./*.key

mkdir -p data
cat > mosquitto.conf <<EOF
listener $PORT 127.0.0.1
# Run as whoever runs the script, so that it reads the certificates here.
user $(id -un)
cafile $work/ca.crt
certfile $work/server.crt
keyfile $work/server.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
allow_anonymous true
persistence true
persistence_location $work/data/
max_queued_messages 0
max_inflight_messages 0
log_dest file $work/mosquitto.log
EOF

"$mosquitto_bin" -c mosquitto.conf &
pids+=($!)
tls=(-h 127.0.0.1 -p "$PORT" --cafile ca.crt --cert client.crt --key client.key)
# Wait (bounded) until it accepts a connection.
for _ in $(seq 1 100); do
    if mosquitto_pub "${tls[@]}" -t ready -m x -q 1 2>/dev/null; then break; fi
    sleep 0.1
done

# 1 KiB messages, one a line (1,023 bytes and the newline).
payload=$(head -c 1023 /dev/zero | tr '\0' 'x')
awk -v n="$MESSAGES" -v p="$payload" 'BEGIN { for (i = 0; i < n; i++) print p }' > payload.txt

mosquitto_sub "${tls[@]}" -i peers-sub -q 1 -t bench -C "$MESSAGES" > received.txt &
sub=$!
pids+=($sub)
# The subscription is in place once the subscriber's session shows in the broker log.
for _ in $(seq 1 100); do
    if grep -q "peers-sub" mosquitto.log 2>/dev/null; then break; fi
    sleep 0.1
done
sleep 0.5
start=$(date +%s.%N)
mosquitto_pub "${tls[@]}" -i peers-pub -q 1 -t bench -l < payload.txt
published=$(date +%s.%N)
wait "$sub"
end=$(date +%s.%N)
got=$(wc -l < received.txt)
calc() { awk "BEGIN { print $1 }"; }
mosq_rate=$(calc "$got / ($end - $start)")
pub_rate=$(calc "$MESSAGES / ($published - $start)")
printf 'mosquitto: %d of %d messages (1 KiB, QoS1, mTLS, persistence) end to end in %.2f s = %.0f msg/s (published at %.0f msg/s)\n' \
    "$got" "$MESSAGES" "$(calc "$end - $start")" "$mosq_rate" "$pub_rate"

# --- ketenpost, same machine, same run ------------------------------------------------
if [ -n "${MOSQUITTO_ONLY:-}" ]; then
    exit 0
fi
cd "$here"
out=$(cargo bench -p ketenpost-broker --bench load -- throughput --messages="$MESSAGES" 2>&1 | tee /dev/stderr)
kp_rate=$(printf '%s\n' "$out" | sed -n 's/.* = \([0-9]*\) accepted\/s.*/\1/p' | tail -1)
if [ -z "$kp_rate" ]; then
    echo "peers: no ketenpost rate in the benchmark's output" >&2
    exit 1
fi
printf '\n== peers ==\nmosquitto QoS1 end to end: %.0f msg/s\nketenpost accepted:        %s msg/s\nratio ketenpost / mosquitto: %.2f [target >= 1.0]\n' \
    "$mosq_rate" "$kp_rate" "$(calc "$kp_rate / $mosq_rate")"
