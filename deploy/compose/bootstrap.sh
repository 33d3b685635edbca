#!/bin/sh
# One-shot set-up of the compose stack (the `bootstrap` service), through the REST API:
#   - a join token the two nodes enrol with (bootstrap/join.token),
#   - a read-only API token for dashboards and scripts (bootstrap/read.token),
#   - the demo config (flux.yaml, with a tunnel user's token made here once),
#   - the tunnel agent's config (bootstrap/flux-tunnel.toml) with a proxy to the demo upstream.
# Run again (docker compose up), it keeps what it made and applies flux.yaml again.
set -eu

out=/var/lib/flux/bootstrap
FLUX_ADMIN_TOKEN="$(cat /var/lib/flux/data/admin.token)"
export FLUX_ADMIN_TOKEN
umask 077

new_secret() {
    python -c 'import secrets; print(secrets.token_urlsafe(24))'
}

if [ ! -s "$out/join.token" ]; then
    fluxctl nodes join-token --group default --uses 2 --ttl 1h >"$out/join.token.new"
    mv "$out/join.token.new" "$out/join.token"
    echo "bootstrap: join token for the nodes in $out/join.token"
fi

if [ ! -s "$out/read.token" ]; then
    fluxctl tokens create "compose-read-$(date +%s)" --role read >"$out/read.token.new"
    mv "$out/read.token.new" "$out/read.token"
    echo "bootstrap: read-only API token in $out/read.token"
fi

if [ ! -s "$out/tunnel-user.token" ]; then
    new_secret >"$out/tunnel-user.token"
fi
sed "s/@TUNNEL_USER_TOKEN@/$(cat "$out/tunnel-user.token")/" /etc/flux/flux.yaml >"$out/flux.yaml"
fluxctl apply -f "$out/flux.yaml" --no-wait

fluxctl tunnels agent-config edge --user demo --server-addr "${TUNNEL_SERVER:-node-1:7000}" -f "$out/flux-tunnel.toml"
cat >>"$out/flux-tunnel.toml" <<'TOML'

[[proxies]]
name = "demo"
type = "tcp"
localIP = "demo"
localPort = 9000
remotePort = 6001
TOML
echo "bootstrap: done"
