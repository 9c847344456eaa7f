#!/bin/bash
# The booted-Debian package test: runs INSIDE the guest (Debian 12, systemd 252 as PID 1),
# as root, from /root/vmtest, started by tests/vm/package-test.sh through
# tests/vm/debian/run.sh. Files beside it: obdgw_CUR_amd64.deb (the package under test)
# and obdgw_PREV_amd64.deb (the same package as an older version, for the upgrade step).
#
# Steps, in order (each one's checks are listed in it):
#   1 install  2 sims  3 start  4 status  5 journal  6 watchdog  7 reload  8 stop
#   9 upgrade  10 remove/purge
# Every step runs even after a failure (later steps say why they fail); the script ends
# with a table and exits 1 when any step failed.
set -uo pipefail
cd /root/vmtest
CUR=./obdgw_CUR_amd64.deb
PREV=./obdgw_PREV_amd64.deb
CONF=/etc/obdgw/obdgw.toml
SOCK=/run/obdgw/control.sock
CONNECTOR=0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21   # the cloud simulator's demo connector
PINCODE=4711

results=()
failed=0
cur_fail=
t_all=$(date +%s)
check() { # DESCRIPTION CMD...: one assertion of the current step
    local what=$1; shift
    if "$@"; then echo "    ok   $what"; else echo "    FAIL $what"; cur_fail=1; fi
}
step() { # NUMBER NAME FUNCTION
    local t0; t0=$(date +%s.%N)
    echo; echo "=== step $1: $2"
    cur_fail=
    "$3"
    local dt; dt=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
    if [ -n "$cur_fail" ]; then results+=("$1|$2|FAIL|$dt"); failed=1
    else results+=("$1|$2|pass|$dt"); fi
}
wait_for() { # SECONDS CMD...: poll every 0.5 s
    local end=$(( $(date +%s) + $1 )); shift
    while ! "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.5; done
}
sim_state() { # GET /admin/state of the cloud simulator (no curl in the guest)
    exec 3<>/dev/tcp/127.0.0.1/8780 || return 1
    printf 'GET /admin/state HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    cat <&3; exec 3<&-
}
sim_state_has() { local s p; s=$(sim_state) || return 1; for p in "$@"; do grep -q "$p" <<< "$s" || return 1; done; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
prop() { systemctl show -p "$2" --value "$1"; }
eq() { [ "$1" = "$2" ] || { echo "      expected '$2', got '$1'"; return 1; }; }
rc_is() { # WANT CMD...: exit status of CMD is WANT
    local want=$1; shift
    "$@" > /tmp/out 2>&1; local rc=$?
    [ "$rc" = "$want" ] || { echo "      '$*' exited $rc, expected $want:"; sed 's/^/        /' /tmp/out | head -20; return 1; }
}

s_install() {
    check "apt install ./obdgw_*.deb" apt-get install -y -qq -o Dpkg::Use-Pty=0 "$CUR"
    check "user obdgw exists (sysusers.d)" id obdgw
    check "group obdgw exists" getent group obdgw
    check "$CONF is 640 root:obdgw" eq "$(stat -c '%a %U:%G' $CONF)" "640 root:obdgw"
    check "$CONF is a conffile" grep -q "^ $CONF " <(dpkg-query -W -f='${Conffiles}\n' obdgw)
    check "obdgw.service enabled" eq "$(systemctl is-enabled obdgw)" enabled
    check "obdgw.service running after install, no step by hand" wait_for 30 systemctl is-active obdgw
    check "obdgw-relay.service installed and disabled" eq "$(systemctl is-enabled obdgw-relay)" disabled
    check "CAN protocols loaded (modules-load.d)" bash -c 'lsmod | grep -q "^can_isotp " && lsmod | grep -q "^can_raw "'
    check "man page obdgw(1)" test -f /usr/share/man/man1/obdgw.1.gz
    check "bash completion" test -f /usr/share/bash-completion/completions/obdgw
    check "example .network for can0" test -f /usr/share/doc/obdgw/examples/80-can0.network
    check "no capabilities" eq "$(prop obdgw CapabilityBoundingSet)" ""
    SYSTEMD_URLIFY=0 systemd-analyze security obdgw 2>&1 | tail -1
    check "live unit's exposure <= 1.5 (systemd-analyze security --threshold=15)" \
        bash -c 'systemd-analyze security --threshold=15 obdgw >/dev/null 2>&1'
}

s_sims() {
    ip link add vcan0 type vcan 2>/dev/null; ip link set vcan0 up
    check "vcan0 up" bash -c 'ip link show vcan0 | grep -q UP'
    systemd-run -q --unit=sim-cloud /usr/bin/obdgw sim cloud --listen 127.0.0.1:8780 --relay-listen 127.0.0.1:9000
    systemd-run -q --unit=sim-vehicle /usr/bin/obdgw sim vehicle --can vcan0
    check "cloud simulator listening (REST 8780, relay 9000)" wait_for 60 bash -c 'port_open() { (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; }; port_open 8780 && port_open 9000'
    check "simulated car answers on vcan0 (obdgw vin --can vcan0)" wait_for 60 obdgw vin --can vcan0
}

configure() {
    # The README's "First configuration", step by step (vcan0 stands for the car's can0).
    # 1. The CAN bus through systemd-networkd: the example file in place, networkd running
    #    and reading it without complaint (there is no can0 in the guest to configure).
    cp /usr/share/doc/obdgw/examples/80-can0.network /etc/systemd/network/
    check "README 1: systemctl enable --now systemd-networkd (with 80-can0.network)" \
        rc_is 0 systemctl enable --now systemd-networkd
    check "  ... networkd read 80-can0.network without a warning" \
        bash -c '! journalctl -u systemd-networkd --no-pager -q | grep -i "80-can0.network"'
    # 2. [cloud] base_url (the simulator plays the vendor's API) and connector_uuid, the
    #    car's bus and the relay.
    sed -i -e "s|^base_url = .*|base_url = \"http://127.0.0.1:8780\"|" \
        -e "s/^# connector_uuid = .*/connector_uuid = \"$CONNECTOR\"/" $CONF
    cat >> $CONF <<TOML

[[can]]
name = "car"
interface = "vcan0"

[tunnel]
relay_url = "ws://127.0.0.1:9000/"
can_interfaces = ["car"]
TOML
    # 3. The pincode as a credential file, exactly as the README writes it.
    install -m 0600 /dev/null /etc/obdgw/pincode
    printf '%s' "$PINCODE" | tee /etc/obdgw/pincode >/dev/null
}

s_start() {
    # The service runs (with the default configuration) since the install, as on a user's
    # box; the README's steps configure it and then restart it.
    configure
    check "README 3: pincode file 600 root:root" eq "$(stat -c '%a %U:%G' /etc/obdgw/pincode)" "600 root:root"
    check "README 4: CREDENTIALS_DIRECTORY=/etc/obdgw obdgw config check" \
        rc_is 0 env CREDENTIALS_DIRECTORY=/etc/obdgw obdgw config check
    check "  ... the pincode is not printed" bash -c "! grep -q '$PINCODE' /tmp/out"
    check "README 4: systemctl enable --now obdgw" rc_is 0 systemctl enable --now obdgw
    # Type=notify: the start job of `restart` returns once READY=1 came, and READY=1
    # promises open ports, so the control socket must answer at once, without a retry.
    check "README 4: systemctl restart obdgw" rc_is 0 systemctl restart obdgw
    check "Type=notify" eq "$(prop obdgw Type)" notify
    check "active after start" eq "$(systemctl is-active obdgw)" active
    check "control socket exists at READY" test -S $SOCK
    check "control socket 660 obdgw:obdgw" eq "$(stat -c '%a %G' $SOCK 2>/dev/null)" "660 obdgw"
    check "obdgw status answers right after READY" rc_is 0 obdgw status
    check "STATUS= text set" test -n "$(prop obdgw StatusText)"
    echo "      StatusText: $(prop obdgw StatusText)"
    # With [cloud] connector_uuid and the pincode credential, the daemon logs in and follows
    # its connector on the status websocket: the simulator has issued a token and has a
    # websocket client.
    check "daemon logged in to the cloud and follows it (simulator: token issued, websocket client)" \
        wait_for 60 sim_state_has '"tokens":[1-9]' '"websocket_clients":[1-9]'
    echo "      simulator: $(sim_state | grep -o '"\(tokens\|websocket_clients\|websocket_subscriptions\)":[0-9]*' | tr '\n' ' ')"
}

s_status() {
    getent passwd opsuser >/dev/null || useradd -M opsuser
    getent passwd otheruser >/dev/null || useradd -M otheruser
    # README 5: the user joins group obdgw, then asks.
    check "README 5: usermod -aG obdgw opsuser" usermod -aG obdgw opsuser
    check "obdgw status as a member of group obdgw: exit 0" rc_is 0 runuser -u opsuser -- obdgw status
    cat /tmp/out | sed 's/^/      | /' | head -30
    check "obdgw status --json as a member of group obdgw" rc_is 0 runuser -u opsuser -- obdgw status --json
    check "  ... prints JSON" grep -q '^[[:space:]]*{' /tmp/out
    check "obdgw status as another user: refused, exit 4" rc_is 4 runuser -u otheruser -- obdgw status
}

s_journal() {
    journalctl -u obdgw -o json --no-pager > /tmp/j.json
    check "journal entries of obdgw carry TARGET=obdgw::..." grep -q '"TARGET":"obdgw' /tmp/j.json
    check "  ... CODE_FILE and CODE_LINE" grep -q '"CODE_FILE":".*"CODE_LINE"\|"CODE_LINE":.*"CODE_FILE"' /tmp/j.json
    check "  ... the events' own fields (F_*)" grep -qE '"F_[A-Z_]+":' /tmp/j.json
    check "  ... SYSLOG_IDENTIFIER=obdgw" grep -q '"SYSLOG_IDENTIFIER":"obdgw"' /tmp/j.json
    grep -o '"F_[A-Z_]*"' /tmp/j.json | sort -u | head -12 | tr '\n' ' '; echo
}

s_watchdog() {
    local pid n0
    pid=$(prop obdgw MainPID); n0=$(prop obdgw NRestarts)
    echo "      MainPID $pid, NRestarts $n0, WatchdogUSec $(prop obdgw WatchdogUSec)"
    check "main process running" test "$pid" -gt 0
    # Never `kill -STOP 0` (that would stop this script's own process group).
    if [ "$pid" -le 0 ]; then return; fi
    kill -STOP "$pid"
    # WatchdogSec (20 s) + TimeoutAbortSec (5 s) + RestartSec (2 s) + start, with margin.
    check "restarted by the watchdog" wait_for 90 bash -c \
        "[ \"\$(systemctl show -p NRestarts --value obdgw)\" -gt $n0 ] && [ \"\$(systemctl show -p MainPID --value obdgw)\" != $pid ] && systemctl is-active -q obdgw"
    check "systemd logged the watchdog timeout" bash -c 'journalctl -u obdgw --no-pager | grep -qi "watchdog timeout"'
    check "new instance answers" wait_for 30 obdgw status
}

s_reload() {
    local pid t
    pid=$(prop obdgw MainPID)
    # A refused configuration: reload fails, the daemon keeps running on the old one.
    cp $CONF /tmp/good.toml
    printf '\n[router]\nqueue_capcity = 1\n' >> $CONF
    check "reload with an invalid config fails" bash -c '! systemctl reload obdgw'
    check "  ... and the daemon keeps running (same PID)" eq "$(prop obdgw MainPID)" "$pid"
    cp /tmp/good.toml $CONF
    sed -i 's/^level = "info"/level = "debug"/' $CONF
    check "log.level set to debug in the config" grep -q '^level = "debug"' $CONF
    t=$(date '+%Y-%m-%d %H:%M:%S')
    sleep 1
    check "systemctl reload obdgw" rc_is 0 systemctl reload obdgw
    check "  ... no restart (same PID)" eq "$(prop obdgw MainPID)" "$pid"
    # The daemon logs each control request at debug level; tracing-journald writes debug
    # records with PRIORITY=6 (its levels sit one below syslog's), so look for the record
    # itself rather than filter by priority.
    check "debug records in the journal after the reload" wait_for 30 bash -c \
        "obdgw status >/dev/null 2>&1; journalctl -u obdgw --since '$t' --no-pager -q | grep -q 'control request'"
}

s_stop() {
    local t0 dt
    t0=$(date +%s%N)
    check "systemctl stop obdgw" systemctl stop obdgw
    dt=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "      stopped in $dt ms (TimeoutStopSec $(prop obdgw TimeoutStopUSec))"
    check "within the timeout (< 15 s)" test "$dt" -lt 15000
    check "Result=success (not timeout or signal)" eq "$(prop obdgw Result)" success
    check "inactive" eq "$(systemctl is-active obdgw)" inactive
}

s_upgrade() {
    local ver_cur
    ver_cur=$(dpkg-deb -f "$CUR" Version)
    echo "      $(dpkg-deb -f "$PREV" Version) -> $ver_cur"
    # The configuration now has local changes (connector, CAN, tunnel, log level).
    cp $CONF /tmp/local.toml
    check "the previous package installs (downgrade to it)" apt-get install -y -qq -o Dpkg::Use-Pty=0 --allow-downgrades "$PREV"
    check "upgrade to the package under test" apt-get install -y -qq -o Dpkg::Use-Pty=0 "$CUR"
    check "installed version is the new one" eq "$(dpkg-query -W -f='${Version}' obdgw)" "$ver_cur"
    check "locally modified conffile kept, byte for byte" cmp -s /tmp/local.toml $CONF
    check "  ... still 640 root:obdgw" eq "$(stat -c '%a %U:%G' $CONF)" "640 root:obdgw"
    check "service running after the upgrade" wait_for 30 systemctl is-active obdgw
    check "  ... and answering" wait_for 30 obdgw status
}

s_purge() {
    check "state directory exists before removal" test -d /var/lib/obdgw
    check "apt remove obdgw" apt-get remove -y -qq -o Dpkg::Use-Pty=0 obdgw
    check "binary gone" test ! -e /usr/bin/obdgw
    check "configuration kept" cmp -s /tmp/local.toml $CONF
    check "pincode kept" test -f /etc/obdgw/pincode
    check "state kept" test -d /var/lib/obdgw
    check "package in state rc" eq "$(dpkg-query -W -f='${db:Status-Abbrev}' obdgw | tr -d ' ')" rc
    check "apt purge obdgw" apt-get purge -y -qq -o Dpkg::Use-Pty=0 obdgw
    check "/etc/obdgw gone" test ! -e /etc/obdgw
    check "/var/lib/obdgw gone" test ! -e /var/lib/obdgw
    check "package unknown to dpkg" bash -c '! dpkg-query -W obdgw 2>/dev/null | grep -q .'
}

echo "booted Debian: $(. /etc/os-release; echo "$PRETTY_NAME"), PID 1 $(cat /proc/1/comm), $(systemctl --version | head -1), kernel $(uname -r)"
step 1 "apt install ./obdgw_*.deb" s_install
step 2 "cloud simulator and simulated car on vcan0" s_sims
step 3 "README config, enable --now, restart: READY" s_start
step 4 "obdgw status: group obdgw yes, others refused" s_status
step 5 "journalctl -o json: structured fields" s_journal
step 6 "kill -STOP: restarted by the watchdog" s_watchdog
step 7 "systemctl reload: log level applied" s_reload
step 8 "systemctl stop within the timeout" s_stop
step 9 "upgrade keeps a modified conffile" s_upgrade
step 10 "apt remove keeps config, purge removes data" s_purge

journalctl -b --no-pager -o short-monotonic > /root/vmtest/journal.txt 2>&1
echo
echo "booted-Debian package test: $(( $(date +%s) - t_all )) s in the guest"
printf '%-4s %-48s %-6s %s\n' step what result seconds
for r in "${results[@]}"; do IFS='|' read -r n w res dt <<< "$r"; printf '%-4s %-48s %-6s %s\n' "$n" "$w" "$res" "$dt"; done
exit $failed
