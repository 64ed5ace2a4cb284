#!/bin/sh
# Runs inside the arm64 Debian guest of scripts/pi-vm-test.sh, as root, from the payload disk
# mounted on /payload (the .deb, a model, this script). Prints "VMTEST ..." lines on the
# console; the host reads them. The last line is "VMTEST RESULT PASS" or "VMTEST RESULT FAIL".
set -u
P=/payload
SOCK=/run/bitnetd/bitnetd.sock
START=$(date +%s)

say() { echo "VMTEST $(($(date +%s) - START))s: $*"; }
fail() {
    say "FAILED: $*"
    journalctl -u bitnetd.service -u bitnetd.socket --no-pager | tail -40 | sed 's/^/VMTEST journal: /'
    systemctl status --no-pager bitnetd.socket bitnetd.service 2>&1 | sed 's/^/VMTEST status: /'
    sed 's/^/VMTEST dpkg: /' /tmp/dpkg.log
    echo "VMTEST RESULT FAIL"
    exit 1
}
# Waits up to $1 seconds for the command in the remaining arguments to succeed.
wait_for() {
    limit=$1
    shift
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -le "$limit" ] || return 1
        sleep 1
    done
}

say "kernel $(uname -r) on $(tr -d '\0' </proc/device-tree/cpus/cpu@0/compatible 2>/dev/null), $(nproc) CPUs, PID 1 is $(cat /proc/1/comm)"

dpkg -i "$P/bitnetd_arm64.deb" >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i"; }
say "installed $(dpkg-query -W -f '${Package} ${Version} ${Architecture}' bitnetd)"
for unit in bitnetd.service bitnetd.socket; do
    [ "$(systemctl is-enabled "$unit")" = enabled ] || fail "$unit is not enabled after install"
done
getent passwd bitnetd >/dev/null || fail "no bitnetd user (sysusers.d)"
getent group bitnetd >/dev/null || fail "no bitnetd group (sysusers.d)"
[ -d /var/lib/bitnetd/models ] || fail "no /var/lib/bitnetd/models (tmpfiles.d)"
dpkg-query -W -f '${Conffiles}\n' bitnetd | grep -q /etc/bitnetd/bitnetd.toml || fail "bitnetd.toml is not a conffile"
[ -S $SOCK ] || fail "bitnetd.socket did not make $SOCK"
say "socket $(stat -c '%A %U:%G' $SOCK), directory $(stat -c '%A %U:%G' /run/bitnetd)"
[ "$(stat -c '%a %G' $SOCK)" = "660 bitnetd" ] || fail "socket mode or group"
# With no model the packaged config (model_dir) keeps the daemon up, answering no_model.
sleep 5
say "without a model: service $(systemctl is-active bitnetd.service): $(systemctl show -p StatusText --value bitnetd.service)"
[ "$(systemctl is-active bitnetd.service)" = active ] || fail "without a model the service is not active"
nomodel=$(bitnetd ask --socket $SOCK "Hello" 2>&1)
say "ask without a model: $nomodel"
echo "$nomodel" | grep -q "no model configured" || fail "no no_model answer without a model"

# A model and a configuration, then a clean start.
cp "$P/model.gguf" /var/lib/bitnetd/models/model.gguf
sed -i -e 's|^model = .*|model = "/var/lib/bitnetd/models/model.gguf"|' \
    -e 's|^host = ""|host = "127.0.0.1"|' /etc/bitnetd/bitnetd.toml
systemctl reset-failed bitnetd.service 2>/dev/null
t=$(date +%s)
systemctl restart bitnetd.service || fail "systemctl restart"
say "READY after $(($(date +%s) - t)) s: $(systemctl show -p StatusText --value bitnetd.service)"
[ "$(systemctl is-active bitnetd.service)" = active ] || fail "not active"

# The socket, as a member of the group and as a user who is not.
useradd -m -G bitnetd alice
useradd -m bob
answer=$(runuser -u alice -- timeout 300 bitnetd ask --socket $SOCK -n 8 --temp 0 "Hello") \
    || fail "bitnetd ask as a member of group bitnetd"
say "alice (group bitnetd) asked over the socket: $(printf '%s' "$answer" | tr '\n' ' ')"
if runuser -u bob -- timeout 30 bitnetd ask --socket $SOCK -n 2 "Hello" >/dev/null 2>&1; then
    fail "bob (not in group bitnetd) could use the socket"
fi
say "bob (not in the group) was refused"

# MQTT through the guest's own mosquitto (Debian's package, listening on localhost).
wait_for 30 systemctl is-active mosquitto.service || fail "mosquitto is not running"
status=$(mosquitto_sub -h 127.0.0.1 -V mqttv5 -t 'bitnetd/+/status' -C 1 -W 60 -v 2>&1) || fail "no retained status: $status"
topic=${status%% *}
node=${topic#bitnetd/}
node=${node%/status}
say "retained status on $topic: $(echo "${status#* }" | cut -c1-80)"
mosquitto_sub -h 127.0.0.1 -V mqttv5 -t bitnetd/reply/vm -C 100 -W 300 >/tmp/replies &
sub=$!
sleep 1
mosquitto_pub -h 127.0.0.1 -V mqttv5 -q 1 -t "bitnetd/$node/request" -D publish response-topic bitnetd/reply/vm \
    -m '{"id":"vm-mqtt","prompt":"Hi","max_tokens":8,"temperature":0}' || fail "mosquitto_pub"
wait_for 300 grep -q '"done":true' /tmp/replies || fail "no final MQTT reply: $(cat /tmp/replies)"
kill $sub 2>/dev/null
say "MQTT reply: $(grep '"done":true' /tmp/replies | cut -c1-120)"
journalctl -u bitnetd.service --no-pager -o cat | grep -q 'request vm-mqtt via' \
    || fail "no request line in journalctl -u bitnetd"
say "journal: $(journalctl -u bitnetd.service --no-pager -o cat | grep 'request vm-mqtt via' | tail -1)"
if journalctl -u bitnetd.service --no-pager -o cat | grep -qi 'operation not permitted'; then
    fail "the daemon hit EPERM under the unit: $(journalctl -u bitnetd.service -o cat | grep -i 'operation not permitted' | head -3)"
fi

# Pinning (the power policy's sched_setaffinity) under the unit's own system-call filter, as
# the bitnetd user: `run --cores 0` warns "could not pin" if the filter refuses it.
set --
while IFS= read -r line; do
    set -- "$@" -p "$line"
done <<EOF
$(grep -E '^(SystemCallFilter|SystemCallErrorNumber|SystemCallArchitectures)=' /usr/lib/systemd/system/bitnetd.service)
EOF
pinned=$(systemd-run --wait --pipe --quiet -p User=bitnetd "$@" -E RUST_LOG=info \
    bitnetd run -m /var/lib/bitnetd/models/model.gguf -t 2 --cores 0 -n 4 --temp 0 -p Hi 2>&1) \
    || fail "run --cores 0 under the unit's filter: $pinned"
if echo "$pinned" | grep -q 'could not pin'; then
    fail "pinning refused under the unit's filter: $pinned"
fi
say "run --cores 0 under the unit's filter ($(($# / 2)) lines) pinned without a warning"

# The clock ceiling's path through the sandbox (README "Power"). The guest has no cpufreq, so
# the unit's grant and restore steps must find nothing to do and succeed...
for step in ExecStartPre ExecStopPost; do
    systemctl show -p "$step" --value bitnetd.service | grep -q 'power --' || fail "no $step clock step in the unit"
done
journalctl -u bitnetd.service --no-pager -o cat | grep -q 'no cpufreq scaling_max_freq' \
    || fail "the unit's --grant-clock did not run: $(journalctl -u bitnetd.service -o cat | grep -i clock | head -3)"
# ...and what the daemon relies on where cpufreq exists is checked on another sysfs file that
# root may write (KSM's run switch): a file granted to group bitnetd the way --grant-clock
# does it is writable by the bitnetd user under the unit's own sandbox only through the
# unit's ReadWritePaths= exception to ProtectKernelTunables=.
knob=/sys/kernel/mm/ksm/run
[ -w $knob ] || fail "no $knob in the guest kernel to check the sandbox with"
chgrp bitnetd $knob && chmod g+w $knob || fail "chgrp/chmod of $knob (as --grant-clock does)"
set --
while IFS= read -r line; do
    case $line in ReadWritePaths=*) ;; *) set -- "$@" -p "$line" ;; esac
done <<EOF
$(grep -E '^(User|Group|PrivateUsers|ProtectKernelTunables|ProtectSystem|NoNewPrivileges|SystemCallFilter|SystemCallErrorNumber|CapabilityBoundingSet)=' /usr/lib/systemd/system/bitnetd.service)
EOF
value=$(cat $knob)
try_write() {
    systemd-run --wait --pipe --quiet --collect "$@" /bin/sh -c "echo $value > $knob" 2>&1
}
if out=$(try_write "$@"); then
    fail "the sandbox without ReadWritePaths= let the bitnetd user write $knob"
fi
say "without the exception the write is refused: $(echo "$out" | tail -1)"
out=$(try_write "$@" -p ReadWritePaths=-/sys/kernel/mm/ksm) \
    || fail "the bitnetd user could not write a granted file under ReadWritePaths=: $out"
say "with ReadWritePaths= the bitnetd user writes a file granted to its group"

# A clean stop: exit 0, offline status retained, no failed units, the socket left listening.
t=$(date +%s)
systemctl stop bitnetd.service || fail "systemctl stop"
say "stopped in $(($(date +%s) - t)) s: result $(systemctl show -p Result --value bitnetd.service), exit status $(systemctl show -p ExecMainStatus --value bitnetd.service)"
[ "$(systemctl show -p Result --value bitnetd.service)" = success ] || fail "unclean stop"
offline=$(mosquitto_sub -h 127.0.0.1 -V mqttv5 -t "bitnetd/$node/status" -C 1 -W 30) || fail "no status after stop"
echo "$offline" | grep -q '"offline"' || fail "retained status after stop: $offline"
say "retained status after stop: $offline"
systemctl is-failed --quiet bitnetd.service bitnetd.socket && fail "a bitnetd unit is failed"
[ -S $SOCK ] || fail "the socket file went away with the daemon"
failed=$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')
say "failed units on the guest: ${failed:-none}"
say "exposure: $(systemd-analyze security bitnetd.service 2>/dev/null | tail -1)"
echo "VMTEST RESULT PASS"
