"""python-can's socketcand interface as an independent socketcand client.

usage: socketcand_client.py HOST PORT CHANNEL N_RECV N_SEND
Receives N_RECV frames (expects ids 0x100 + i % 0x100 and data [i & 0xFF, 0xAA]), then sends
N_SEND frames (id 0x7DF, data [0x02, 0x01, i & 0xFF]) and prints a JSON summary.
Probe frames with id 0x0AA are not counted: the first one makes it print READY, so a test
knows frames reach it before it plays the counted ones.
"""
import json
import sys
import time

import can


def main() -> int:
    host, port, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n_recv, n_send = int(sys.argv[4]), int(sys.argv[5])
    bus = can.Bus(interface="socketcand", host=host, port=port, channel=channel)
    errors = []
    got = 0
    ready = False
    deadline = time.time() + 30
    while got < n_recv and time.time() < deadline:
        msg = bus.recv(timeout=1.0)
        if msg is None:
            continue
        if msg.arbitration_id == 0x0AA:
            if not ready:
                ready = True
                print("READY", flush=True)
            continue
        want_id = 0x100 + (got % 0x100)
        want_data = bytes([got & 0xFF, 0xAA])
        if msg.arbitration_id != want_id or bytes(msg.data) != want_data:
            errors.append(f"frame {got}: got {msg.arbitration_id:X}#{bytes(msg.data).hex()}")
        got += 1
    for i in range(n_send):
        bus.send(can.Message(arbitration_id=0x7DF, data=[0x02, 0x01, i & 0xFF], is_extended_id=False))
    # Let the last sends leave before closing.
    time.sleep(0.2)
    bus.shutdown()
    print(json.dumps({"received": got, "errors": errors[:5]}))
    return 0 if got == n_recv and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
