#!/usr/bin/env bash
# Federation peers for the s2s conformance driver (conformance/s2s_peers.py): Debian's Prosody
# (0.12) and ejabberd (23.01), each with a throw-away config in a work directory, run as its own
# user (as bench/compare does), on its own loopback address and the standard ports:
#
#   starling.test  127.0.0.2   (Starling, started by the driver itself)
#   prosody.test   127.0.0.3   c2s 5222, s2s 5269
#   ejabberd.test  127.0.0.4   c2s 5222, s2s 5269
# and each server's MUC service (XEP-0045), a domain of its own reached on its server's s2s port:
#   conference.starling.test 127.0.0.2, conference.prosody.test 127.0.0.3 (Prosody's "muc"
#   component), conference.ejabberd.test 127.0.0.4 (ejabberd's mod_muc).
# Both peers run PEP (XEP-0163): Prosody's mod_pep, ejabberd's mod_pubsub with the pep plugin.
#
# Usage (as root):
#   s2s_peers.sh check                          root, prosody, ejabberdctl, openssl, setpriv present
#                                               (apt-get install of ejabberd / prosody if missing)
#   s2s_peers.sh hosts-add | hosts-remove       the six names in /etc/hosts, lines ending in
#                                               "# starling-conformance" (idempotent)
#   s2s_peers.sh prosody-start WORK USER:PASS...   config, certificate, accounts, start, wait
#   s2s_peers.sh ejabberd-start WORK USER:PASS...
#   s2s_peers.sh stop WORK                      stop Prosody, ejabberd and the driver's Starling
#                                               (WORK/starling.pid) if running
#   s2s_peers.sh cleanup WORK                   stop, then hosts-remove
# Exit status 0 on success; on failure the last line on stderr says why.
# S2S_EJABBERD_LOGLEVEL (default info; debug shows every stanza ejabberd routes) and
# S2S_START_WAIT (seconds, default 40) tune ejabberd-start and the waits for the listeners.
#
# Name resolution (how each peer finds starling.test and the other peer; there are no SRV
# records, the system resolver answers NXDOMAIN for _xmpp-server._tcp.*.test):
# - ejabberd 23.01 (xmpp_stream_out): SRV through Erlang's inet_res (the nameservers of
#   /etc/resolv.conf; NXDOMAIN, or a timeout bounded by s2s_dns_timeout x s2s_dns_retries), then
#   the A record through net:getaddrinfo, i.e. libc and nsswitch: /etc/hosts is used.
# - Prosody 0.12 with lua-unbound installed (Debian's prosody depends on it) replaces its own
#   resolver (net.dns) with libunbound (net/unbound.lua), and sets libunbound's hoststxt to false
#   unless configured: /etc/hosts is NOT used by default. The config below sets
#   unbound = { hoststxt = "/etc/hosts" }, which makes libunbound load /etc/hosts as local data
#   (A records for the six names, NODATA for their AAAA; SRV still asks the system resolver).
#   Without lua-unbound, Prosody's own net.dns reads /etc/hosts anyway.
set -u -o pipefail

MARK="# starling-conformance"
HOSTS_LINES="127.0.0.2 starling.test conference.starling.test $MARK
127.0.0.3 prosody.test conference.prosody.test $MARK
127.0.0.4 ejabberd.test conference.ejabberd.test $MARK"
WAIT=${S2S_START_WAIT:-40}

die() { echo "$*" >&2; exit 1; }

wait_listen() { # addr port seconds
    local deadline=$(($(date +%s) + $3))
    while (($(date +%s) < deadline)); do
        if timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    return 1
}

listening() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# /etc/hosts may be a bind mount (containers): rewrite it in place, never rename over it.
hosts_remove() {
    local tmp
    grep -q -- "$MARK\$" /etc/hosts 2>/dev/null || return 0
    tmp=$(mktemp) || return 1
    grep -v -- "$MARK\$" /etc/hosts >"$tmp"
    cat "$tmp" >/etc/hosts
    rm -f "$tmp"
}

hosts_add() {
    hosts_remove || return 1
    [[ -z $(tail -c 1 /etc/hosts) ]] || echo >>/etc/hosts
    printf '%s\n' "$HOSTS_LINES" >>/etc/hosts
}

cert() { # dir domain: dir/domain.crt, dir/domain.key (self-signed, ECDSA P-256), for the domain
        # and its MUC service conference.domain
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=$2" -addext "subjectAltName=DNS:$2,DNS:conference.$2" \
        -keyout "$1/$2.key" -out "$1/$2.crt" >/dev/null 2>&1 || die "openssl could not make a certificate for $2"
}

# A peer must not collide with one left over from an earlier run, or with another service.
port_free() { # addr port
    if listening "$1" "$2"; then die "$1:$2 is already in use (an earlier run still going? see ss -ltnp)"; fi
}

readable_as() { # user file
    setpriv --reuid="$1" --regid="$1" --init-groups test -r "$2" ||
        die "$2 is not readable by the $1 user (make every directory above it traversable, e.g. chmod 711)"
}

# ------------------------------------------------------------------------------------ check ---
cmd_check() {
    [[ $(id -u) == 0 ]] || die "needs root (setpriv to the prosody and ejabberd users, /etc/hosts)"
    local missing=()
    command -v prosody >/dev/null || missing+=(prosody)
    command -v ejabberdctl >/dev/null || missing+=(ejabberd)
    command -v openssl >/dev/null || missing+=(openssl)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get"
        echo "apt-get install -y ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "${missing[@]}" >&2 ||
            die "apt-get install ${missing[*]} failed"
        # The packages start their system-wide services; this harness runs its own instances.
        for s in prosody ejabberd; do
            if command -v systemctl >/dev/null; then systemctl stop "$s" >/dev/null 2>&1 || true; fi
            service "$s" stop >/dev/null 2>&1 || true
        done
    fi
    for c in prosody prosodyctl ejabberdctl erl openssl setpriv; do
        command -v "$c" >/dev/null || die "$c not found"
    done
    id prosody >/dev/null 2>&1 || die "no prosody user"
    id ejabberd >/dev/null 2>&1 || die "no ejabberd user"
    echo "prosody $(dpkg-query -W -f='${Version}' prosody 2>/dev/null), ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null), lua-unbound $(dpkg-query -W -f='${Version}' lua-unbound 2>/dev/null || echo none)"
}

# ---------------------------------------------------------------------------------- Prosody ---
# Prosody 0.12: s2s_require_encryption (STARTTLS on every s2s stream) with s2s_secure_auth =
# false: a peer whose certificate does not verify (all of them here: self-signed) is
# authenticated with dialback (mod_dialback, XEP-0220) over the encrypted stream.
cmd_prosody_start() {
    local work=$1; shift
    local d=$work/prosody pid u
    mkdir -p "$d/data" "$d/certs"
    port_free 127.0.0.3 5222; port_free 127.0.0.3 5269
    cert "$d/certs" prosody.test
    cat >"$d/prosody.cfg.lua" <<EOF
-- Throw-away config of conformance/s2s_peers.sh (template: /etc/prosody/prosody.cfg.lua).
pidfile = "$d/prosody.pid"
data_path = "$d/data"
plugin_paths = { }
modules_enabled = {
  "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version"; "time"; "posix";
  "pep";
}
daemonize = false
allow_registration = false
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = false
-- Every listener on 127.0.0.3 only.
interfaces = { "127.0.0.3" }
c2s_ports = { 5222 }
c2s_interfaces = { "127.0.0.3" }
s2s_ports = { 5269 }
s2s_interfaces = { "127.0.0.3" }
c2s_direct_tls_ports = { }
s2s_direct_tls_ports = { }
http_ports = { }
https_ports = { }
use_ipv6 = false
-- libunbound (lua-unbound) ignores /etc/hosts unless told (Prosody defaults hoststxt to false).
unbound = { hoststxt = "/etc/hosts" }
log = { { levels = { min = "debug" }, to = "file", filename = "$d/prosody.log" } }
certificates = "$d/certs"
ssl = { certificate = "$d/certs/prosody.test.crt"; key = "$d/certs/prosody.test.key" }
VirtualHost "prosody.test"
-- XEP-0045 rooms (anyone may create one; a new room stays locked until its owner configures it).
Component "conference.prosody.test" "muc"
EOF
    chown -R prosody:prosody "$d"
    readable_as prosody "$d/prosody.cfg.lua"
    for u in "$@"; do
        prosodyctl --config "$d/prosody.cfg.lua" register "${u%%:*}" prosody.test "${u#*:}" >>"$d/register.log" 2>&1 ||
            die "prosodyctl register ${u%%:*}@prosody.test failed: $(tail -n 2 "$d/register.log" | tr '\n' ' ')"
    done
    chown -R prosody:prosody "$d"
    # Prosody refuses to run as root; setpriv execs it as the prosody user, so $! is its PID.
    setpriv --reuid=prosody --regid=prosody --init-groups prosody --config "$d/prosody.cfg.lua" -F \
        </dev/null >"$d/prosody.out" 2>&1 &
    pid=$!
    echo "$pid" >"$d/launch.pid"
    if ! wait_listen 127.0.0.3 5222 "$WAIT" || ! wait_listen 127.0.0.3 5269 5; then
        kill -0 "$pid" 2>/dev/null || die "prosody exited: $(tail -n 3 "$d/prosody.out" "$d/prosody.log" 2>/dev/null | tr '\n' ' ')"
        die "prosody not listening on 127.0.0.3:5222 and :5269 after ${WAIT}s: $(grep -i 'error' "$d/prosody.log" | tail -n 3 | tr '\n' ' ')"
    fi
    echo "prosody running (pid $pid), config $d/prosody.cfg.lua, log $d/prosody.log"
}

# Stop the process of PIDFILE if it still runs with CONFIG on its command line (TERM, then
# KILL after 10 s), and remove the pid file.
stop_pidfile() { # pidfile config
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    if kill -0 "$pid" 2>/dev/null && grep -qa "$2" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$1"
}

stop_prosody() { stop_pidfile "$1/prosody/launch.pid" "$1/prosody/prosody.cfg.lua"; }

# --------------------------------------------------------------------------------- ejabberd ---
# ejabberdctl run as root goes through su (PAM); run it as the ejabberd user directly, with
# HOME for the Erlang cookie (bench/compare does the same).
# Every call bounded (EJCTL_TIMEOUT seconds).
ejctl() { # work args...
    local d=$1/ejabberd; shift
    timeout "${EJCTL_TIMEOUT:-60}" setpriv --reuid=ejabberd --regid=ejabberd --init-groups env HOME=/var/lib/ejabberd \
        ejabberdctl --config-dir "$d" --ctl-config "$d/ejabberdctl.cfg" --config "$d/ejabberd.yml" \
        --spool "$d/spool" --logs "$d/logs" "$@"
}
EJ_NODE=s2speer@localhost

# ejabberd 23.01: s2s_use_starttls: required works with self-signed certificates on both sides:
# mod_s2s_dialback (loaded below, access: all by default) turns off the certificate check of
# outgoing streams (its s2s_out_tls_verify hook), so a peer without a verifiable certificate is
# authenticated with dialback over TLS; incoming streams are offered dialback as well.
cmd_ejabberd_start() {
    local work=$1; shift
    local d=$work/ejabberd u
    mkdir -p "$d/spool" "$d/logs"
    port_free 127.0.0.4 5222; port_free 127.0.0.4 5269
    cert "$d" ejabberd.test
    cat "$d/ejabberd.test.crt" "$d/ejabberd.test.key" >"$d/ejabberd.test.pem"
    cp /etc/ejabberd/inetrc "$d/inetrc" 2>/dev/null || : >"$d/inetrc"
    cat >"$d/ejabberd.yml" <<EOF
# Throw-away config of conformance/s2s_peers.sh (template: /etc/ejabberd/ejabberd.yml).
loglevel: ${S2S_EJABBERD_LOGLEVEL:-info}
hosts:
  - ejabberd.test
certfiles:
  - "$d/ejabberd.test.pem"
acme:
  auto: false
listen:
  -
    port: 5222
    ip: "127.0.0.4"
    module: ejabberd_c2s
    starttls_required: true
  -
    port: 5269
    ip: "127.0.0.4"
    module: ejabberd_s2s_in
s2s_use_starttls: required
s2s_access: all
# No SRV records here: fail fast on the SRV lookup, then the A record comes from /etc/hosts.
s2s_dns_timeout: 5
s2s_dns_retries: 1
outgoing_s2s_families:
  - ipv4
outgoing_s2s_ipv4_address: "127.0.0.4"
auth_method: internal
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
modules:
  mod_caps: {}
  mod_disco: {}
  mod_offline: {}
  mod_muc:
    hosts:
      - conference.ejabberd.test
  mod_ping: {}
  mod_pubsub:
    plugins:
      - flat
      - pep
  mod_roster: {}
  mod_s2s_dialback: {}
  mod_version: {}
EOF
    cat >"$d/ejabberdctl.cfg" <<EOF
ERLANG_NODE=$EJ_NODE
INET_DIST_INTERFACE=127.0.0.1
EJABBERD_PID_PATH=$d/ejabberd.pid
EJABBERD_BYPASS_WARNINGS=true
EOF
    chown -R ejabberd:ejabberd "$d"
    readable_as ejabberd "$d/ejabberd.yml"
    if ejctl "$work" status >/dev/null 2>&1; then die "an ejabberd node $EJ_NODE is already running"; fi
    touch "$d/started-by-harness"  # before the start: a start cut short is cleaned up too
    (cd "$d" && ejctl "$work" start </dev/null >"$d/start.out" 2>&1) ||
        die "ejabberdctl start failed: $(tail -n 3 "$d/start.out" | tr '\n' ' ')"
    if ! (cd "$d" && EJCTL_TIMEOUT=90 ejctl "$work" started </dev/null >>"$d/start.out" 2>&1); then
        die "ejabberd did not start: $(tail -n 5 "$d/logs/error.log" 2>/dev/null | tr '\n' ' ')"
    fi
    if ! wait_listen 127.0.0.4 5222 "$WAIT" || ! wait_listen 127.0.0.4 5269 5; then
        die "ejabberd not listening on 127.0.0.4:5222 and :5269: $(tail -n 5 "$d/logs/error.log" 2>/dev/null | tr '\n' ' ')"
    fi
    for u in "$@"; do
        (cd "$d" && ejctl "$work" register "${u%%:*}" ejabberd.test "${u#*:}" </dev/null >>"$d/register.log" 2>&1) ||
            die "ejabberdctl register ${u%%:*}@ejabberd.test failed: $(tail -n 2 "$d/register.log" | tr '\n' ' ')"
    done
    echo "ejabberd running (node $EJ_NODE, pid $(cat "$d/ejabberd.pid" 2>/dev/null)), config $d/ejabberd.yml, logs $d/logs"
}

stop_ejabberd() {
    local work=$1 d=$1/ejabberd pid
    [[ -f $d/started-by-harness ]] || return 0
    (cd "$d" && EJCTL_TIMEOUT=30 ejctl "$work" stop </dev/null >/dev/null 2>&1 &&
        EJCTL_TIMEOUT=30 ejctl "$work" stopped </dev/null >/dev/null 2>&1) || true
    # Whatever of this harness is left (a node that did not stop, a start or an ejabberdctl
    # cut short): the ejabberd user's processes with this work directory in their command line
    # (ejabberdctl's --config-dir, the node's mnesia dir), by PID, twice (a wrapper may spawn
    # one more as it goes).
    local pids
    for _ in 1 2; do
        pids=$(pgrep -u ejabberd -f -- "$d/") || pids=""
        pid=$(cat "$d/ejabberd.pid" 2>/dev/null) || pid=""
        if [[ -n $pid ]] && grep -qa "$EJ_NODE" "/proc/$pid/cmdline" 2>/dev/null; then pids+=" $pid"; fi
        [[ -n ${pids// /} ]] || break
        kill -KILL $pids 2>/dev/null
        sleep 0.5
    done
    rm -f "$d/started-by-harness"
}

stop_starling() { stop_pidfile "$1/starling.pid" "$1/starling.toml"; }

# -------------------------------------------------------------------------------------- main ---
cmd=${1:-}; shift || true
case $cmd in
    check) cmd_check ;;
    hosts-add) hosts_add || die "could not write /etc/hosts" ;;
    hosts-remove) hosts_remove || die "could not write /etc/hosts" ;;
    prosody-start) [[ $# -ge 1 ]] || die "usage: $0 prosody-start WORK USER:PASS..."; cmd_prosody_start "$@" ;;
    ejabberd-start) [[ $# -ge 1 ]] || die "usage: $0 ejabberd-start WORK USER:PASS..."; cmd_ejabberd_start "$@" ;;
    stop) [[ $# -ge 1 ]] || die "usage: $0 stop WORK"; stop_starling "$1"; stop_prosody "$1"; stop_ejabberd "$1" ;;
    cleanup) [[ $# -ge 1 ]] || die "usage: $0 cleanup WORK"; stop_starling "$1"; stop_prosody "$1"; stop_ejabberd "$1"; hosts_remove ;;
    *) die "usage: $0 check|hosts-add|hosts-remove|prosody-start|ejabberd-start|stop|cleanup ..." ;;
esac
