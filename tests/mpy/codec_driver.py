"""MicroPython side of the differential codec tests (runs under the unix port, not CPython).

Usage: micropython codec_driver.py REPO_ROOT, then one command per line on stdin,
one JSON answer per line on stdout:

    E {"type": id, "seq": n, "ack": n, "flags": n, "fields": {name: value}}
        -> {"wire": hex}  (the encoded frame, 0x00 included)
    D hex  -> {"events": [...], "drops": {reason: n}, "pending": n}  (a fresh decoder)
    F hex  -> the same, fed to one decoder that persists across F commands
    R      -> start that persistent decoder afresh
    Q      -> exit

Tail fields travel as hex in both directions (text tails as their UTF-8 bytes).
An event is one per frame that passed the CRC, in order: {"type", "seq", "ack", "flags",
"fields"}, or {"drop": "unknown_type" | "body"}; "drops" counts every drop reason seen.
"""

import json
import sys


def main():
    root = sys.argv[1]
    sys.path.append(root + "/scalerunner/protocol")
    sys.path.append(root + "/scalerunner/protocol/mpy")
    import binascii

    import srp

    def tail_of(type_id):
        lay = srp.TABLE[type_id]
        return lay[3]  # 0 none, 1 bytes, 2 str

    def encode(msg):
        type_id = msg["type"]
        names = srp.field_names(type_id)
        given = msg["fields"]
        values = []
        for name in names:
            values.append(given[name])
        kind = tail_of(type_id)
        if kind:
            raw = binascii.unhexlify(values[-1])
            values[-1] = str(raw, "utf-8") if kind == 2 else raw
        wire = srp.Encoder().encode(type_id, msg["seq"], msg["ack"], msg["flags"], tuple(values))
        return {"wire": binascii.hexlify(wire).decode()}

    def decoder_with(events):
        dec = None

        def on_frame(type_id, seq, ack, flags, body):
            fields = srp.unpack(type_id, body)
            if isinstance(fields, int):
                reason = "unknown_type" if fields == srp.ERR_UNKNOWN_TYPE else "body"
                dec.drop(reason)
                events.append({"drop": reason})
                return
            names = srp.field_names(type_id)
            out = {}
            for i in range(len(names)):
                value = fields[i]
                if not isinstance(value, int):
                    raw = value.encode() if isinstance(value, str) else value
                    value = binascii.hexlify(raw).decode()
                out[names[i]] = value
            events.append({"type": type_id, "seq": seq, "ack": ack, "flags": flags, "fields": out})

        dec = srp.Decoder(on_frame)
        return dec

    def feed(dec, events, hexdata):
        del events[:]
        before = dict(dec.drops)
        dec.feed(binascii.unhexlify(hexdata))
        drops = {}
        for reason in srp.REASONS:
            if dec.drops[reason] != before[reason]:
                drops[reason] = dec.drops[reason] - before[reason]
        return {"events": list(events), "drops": drops, "pending": dec.pending}

    persistent_events = []
    persistent = decoder_with(persistent_events)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        cmd, arg = line[:1], line[2:]
        if cmd == "Q":
            break
        try:
            if cmd == "E":
                answer = encode(json.loads(arg))
            elif cmd == "D":
                events = []
                answer = feed(decoder_with(events), events, arg)
            elif cmd == "F":
                answer = feed(persistent, persistent_events, arg)
            elif cmd == "R":
                persistent = decoder_with(persistent_events)
                answer = {"reset": True}
            else:
                answer = {"error": "unknown command " + cmd}
        except Exception as exc:  # a bad command must not end the session
            answer = {"error": repr(exc)}
        print(json.dumps(answer))
        sys.stdout.flush()


main()
