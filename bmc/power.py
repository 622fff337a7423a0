# power: the node's power state machine. Pure: no I/O, no clock of its own.
#
# The caller feeds it the time, the host's requests and the rail voltage it read;
# it answers with pin changes to apply and events to log. Every transition is
# logged with its reason, and a FAULT is latched: only OFF or CYCLE clear it.
#
#   OFF --ON/BUTTON/CYCLE--> STARTING --rail good--> ON
#   STARTING --rail not good within rail_timeout_ms--> FAULT (rail cut)
#   ON --OFF/BUTTON_LONG--> STOPPING --rail below off_mv (or stop_timeout_ms)--> OFF
#   ON --BUTTON--> (button pulse to the node) STOPPING, graceful: the rail is cut after grace_ms
#   ON --CYCLE--> STOPPING, then ON again once min_off_ms have passed
#   ON --rail below good_mv--> FAULT (brown-out)
# An ON that comes less than min_off_ms after the rail went off waits, it is not dropped.

from micropython import const

# PowerState (docs/protocol.md)
OFF = const(0)
ON = const(1)
STARTING = const(2)
STOPPING = const(3)
FAULT = const(4)
STATE_NAMES = ("OFF", "ON", "STARTING", "STOPPING", "FAULT")

# PowerAction
A_OFF = const(0)
A_ON = const(1)
A_CYCLE = const(2)
A_RESET = const(3)
A_BUTTON = const(4)
A_BUTTON_LONG = const(5)
NO_ACTION = const(-1)
ACTION_NAMES = ("OFF", "ON", "CYCLE", "RESET", "BUTTON", "BUTTON_LONG")
BOOT_MODE_NAMES = ("NORMAL", "NETWORK", "USB", "RECOVERY")

# Pins the machine drives (the HAL maps them to real lines).
PIN_RAIL = const(0)  # 1: rail enabled
PIN_RESET = const(1)  # 1: the node's reset held asserted
PIN_BUTTON = const(2)  # 1: the node's power button pressed
PIN_BOOT = const(3)  # the boot-mode select lines, as a number 0..3

# EventLevel
DEBUG = const(0)
INFO = const(1)
WARNING = const(2)
ERROR = const(3)

# Event codes (main.py has its own; bmc/README.md lists them all).
EV_POWER = const(0x0110)  # a state transition (level ERROR for FAULT: rail never good, brown-out)
EV_RESET = const(0x0112)
EV_REFUSED = const(0x0114)  # a request the current state does not allow
EV_BOOT_MODE = const(0x0115)
EV_DEFERRED = const(0x0116)  # ON waiting for the minimum off time


class Config:
    def __init__(self, rail_timeout_ms=500, min_off_ms=1000, reset_ms=100, button_ms=200,
                 grace_ms=5000, stop_timeout_ms=500, good_mv=4750, off_mv=500):
        self.rail_timeout_ms = rail_timeout_ms
        self.min_off_ms = min_off_ms
        self.reset_ms = reset_ms
        self.button_ms = button_ms
        self.grace_ms = grace_ms
        self.stop_timeout_ms = stop_timeout_ms
        self.good_mv = good_mv
        self.off_mv = off_mv


class Power:
    """step(now_ms, action, rail_mv) -> [pins, events].

    pins: list of (PIN_*, value) to apply now; events: list of (level, code, text). Both lists are
    reused by the next step: use them before calling it again.
    `now_ms` must not go backwards (the caller keeps a monotonic uptime).
    """

    def __init__(self, config=None, now_ms=0):
        self.cfg = config or Config()
        self.state = OFF
        self.boot_mode = 0
        self.off_since = now_ms - self.cfg.min_off_ms  # at boot the node has been off long enough
        self.pending_on = False
        self.graceful = False
        self.deadline = 0
        self.reset_until = -1  # -1: reset not asserted
        self.button_until = -1
        self.fault = ""
        self.pins = [0, 0, 0, 0]
        # The lists step() hands back, reused: a step with nothing to do allocates nothing.
        self._changes = []  # type: list[tuple[int, int]]
        self._events = []  # type: list[tuple[int, int, str]]
        self._result = [self._changes, self._events]

    # --- helpers ---------------------------------------------------------------

    def _pin(self, out, pin, value):
        if self.pins[pin] != value:
            self.pins[pin] = value
            out.append((pin, value))

    def _goto(self, events, state, reason):
        events.append((ERROR if state == FAULT else INFO, EV_POWER,
                       "%s -> %s: %s" % (STATE_NAMES[self.state], STATE_NAMES[state], reason)))
        self.state = state

    def _start(self, now, pins, events, reason):
        self.pending_on = False
        self._pin(pins, PIN_BOOT, self.boot_mode)
        self._pin(pins, PIN_RESET, 1)  # held in reset until the rail is good
        self._pin(pins, PIN_RAIL, 1)
        self.deadline = now + self.cfg.rail_timeout_ms
        self._goto(events, STARTING, reason + ", boot " + BOOT_MODE_NAMES[self.boot_mode])

    def _cut(self, now, pins, events, reason):
        self.graceful = False
        self._pin(pins, PIN_RAIL, 0)
        self.deadline = now + self.cfg.stop_timeout_ms
        self._goto(events, STOPPING, reason)

    def _refuse(self, events, action):
        text = "%s refused: power is %s" % (ACTION_NAMES[action], STATE_NAMES[self.state])
        events.append((WARNING, EV_REFUSED, text))

    def _request_on(self, now, pins, events, reason):
        wait = self.off_since + self.cfg.min_off_ms - now
        if wait > 0:
            if not self.pending_on:
                events.append((INFO, EV_DEFERRED, "on in %d ms (minimum off time)" % wait))
            self.pending_on = True
        else:
            self._start(now, pins, events, reason)

    # --- the one decision function ---------------------------------------------

    def select_boot_mode(self, mode):
        """BOOT_MODE: the select lines for the next power-on. Returns the event to log."""
        if not 0 <= mode < len(BOOT_MODE_NAMES):
            raise ValueError("boot mode %d" % mode)
        self.boot_mode = mode
        return (INFO, EV_BOOT_MODE, "boot mode %s for the next power-on" % BOOT_MODE_NAMES[mode])

    def step(self, now, action=NO_ACTION, rail_mv=0):
        pins = self._changes
        events = self._events
        # Emptied with pop(): MicroPython's list.clear() reallocates the storage, even of an empty list.
        while pins:
            pins.pop()
        while events:
            events.pop()
        s = self.state
        # Timed pulses end whatever the state.
        if self.reset_until >= 0 and now >= self.reset_until and s == ON:
            self.reset_until = -1
            self._pin(pins, PIN_RESET, 0)
            events.append((INFO, EV_RESET, "reset released"))
        if self.button_until >= 0 and now >= self.button_until:
            self.button_until = -1
            self._pin(pins, PIN_BUTTON, 0)
        # Requests.
        if action != NO_ACTION:
            if not 0 <= action < len(ACTION_NAMES):
                raise ValueError("power action %d" % action)
            if action == A_OFF or action == A_BUTTON_LONG:
                self.pending_on = False
                if s == STARTING or s == ON or (s == STOPPING and self.graceful):
                    self._cut(now, pins, events, ACTION_NAMES[action])
                elif s == FAULT:
                    self.off_since = now
                    self._goto(events, OFF, "fault cleared by " + ACTION_NAMES[action])
                # OFF or already cutting: nothing to do
            elif action == A_ON:
                if s == OFF:
                    self._request_on(now, pins, events, "ON")
                elif s == FAULT or s == STOPPING:
                    self._refuse(events, action)
            elif action == A_CYCLE:
                if s == ON or s == STARTING:
                    self._cut(now, pins, events, "CYCLE")
                    self.pending_on = True
                elif s == OFF:
                    self._request_on(now, pins, events, "CYCLE")
                elif s == FAULT:
                    self.off_since = now
                    self._goto(events, OFF, "fault cleared by CYCLE")
                    self._request_on(now, pins, events, "CYCLE")
                else:  # STOPPING: come back on afterwards
                    self.pending_on = True
            elif action == A_RESET:
                if s == ON:
                    self._pin(pins, PIN_RESET, 1)
                    self.reset_until = now + self.cfg.reset_ms
                    events.append((INFO, EV_RESET, "reset asserted for %d ms" % self.cfg.reset_ms))
                else:
                    self._refuse(events, action)
            elif action == A_BUTTON:
                if s == OFF:
                    self._request_on(now, pins, events, "BUTTON")
                elif s == ON:
                    self._pin(pins, PIN_BUTTON, 1)
                    self.button_until = now + self.cfg.button_ms
                    self.graceful = True
                    self.deadline = now + self.cfg.grace_ms
                    self._goto(events, STOPPING, "BUTTON: graceful off requested")
                else:
                    self._refuse(events, action)
        # Time and the rail.
        s = self.state
        if s == OFF:
            if self.pending_on and now - self.off_since >= self.cfg.min_off_ms:
                self._start(now, pins, events, "deferred ON")
        elif s == STARTING:
            if rail_mv >= self.cfg.good_mv:
                self._pin(pins, PIN_RESET, 0)
                self._goto(events, ON, "rail good at %d mV" % rail_mv)
            elif now >= self.deadline:
                self._pin(pins, PIN_RAIL, 0)
                self._pin(pins, PIN_RESET, 0)
                self.pending_on = False
                self.fault = "rail %d mV, not good within %d ms" % (rail_mv, self.cfg.rail_timeout_ms)
                self._goto(events, FAULT, self.fault)
        elif s == ON:
            if rail_mv < self.cfg.good_mv:
                self._pin(pins, PIN_RAIL, 0)
                self._pin(pins, PIN_RESET, 0)
                self.reset_until = -1
                self.pending_on = False
                self.fault = "brown-out: rail %d mV" % rail_mv
                self._goto(events, FAULT, self.fault)
        elif s == STOPPING:
            if self.graceful:
                if now >= self.deadline:
                    self._cut(now, pins, events, "grace time over")
            elif rail_mv < self.cfg.off_mv or now >= self.deadline:
                if rail_mv >= self.cfg.off_mv:
                    text = "rail still %d mV after %d ms" % (rail_mv, self.cfg.stop_timeout_ms)
                    events.append((WARNING, EV_POWER, text))
                self._pin(pins, PIN_RESET, 0)
                self.reset_until = -1
                self.off_since = now
                self._goto(events, OFF, "rail off")
                if self.pending_on:
                    events.append((INFO, EV_DEFERRED, "on in %d ms (minimum off time)" % self.cfg.min_off_ms))
        return self._result
