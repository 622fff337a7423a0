#!/bin/sh
# One run of scalerunner-agent; busybox init starts this again whenever it exits (/etc/inittab).
# A run that ends quickly waits before the next, doubling up to 30 s, so a broken configuration
# does not spin; a run that lasted a minute resets the wait.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin  # busybox init sets its own
# SCALERUNNER_*: only tests set them (tests/test_imagebuild.py runs this on the host).
CONSOLE="${SCALERUNNER_CONSOLE:-/dev/console}"
AGENT="${SCALERUNNER_AGENT:-scalerunner-agent}"
state="${SCALERUNNER_RUN_DIR:-/run}/scalerunner-agent.wait"
say() { echo "scalerunner-init: $*" >> "$CONSOLE"; }
wait_s=$(cat "$state" 2> /dev/null || echo 0)
if [ "$wait_s" -gt 0 ]; then
    sleep "$wait_s"
fi
started=$(cut -d. -f1 /proc/uptime)
say "scalerunner-agent starting"
"$AGENT" --config /etc/scalerunner/agent.toml
code=$?
ran=$(($(cut -d. -f1 /proc/uptime) - started))
if [ "$ran" -ge 60 ]; then
    next=1
else
    next=$((wait_s * 2))
    [ "$next" -lt 1 ] && next=1
    [ "$next" -gt 30 ] && next=30
fi
echo "$next" > "$state"
say "scalerunner-agent exited with code $code after ${ran}s; restarting in ${next}s"
