"""python-can's socketcand interface as an independent socketcand client of `obdgw operator`,
talking to the bus of a simulated car behind the tunnel (tests/tunnel_processes.rs).

usage: socketcand_sim_vehicle.py HOST PORT CHANNEL N_RECV N_SEND

1. Waits for probe frames (id 0x0AA; the first makes it print READY), then receives N_RECV
   frames played on the car's bus (ids 0x100 + i % 0x100, data [i & 0xFF, 0xAA]).
2. Asks the simulated car for its VIN with OBD-II service 09 PID 02 on the functional id
   0x7DF and reassembles the engine's ISO-TP answer from raw frames (0x7E8), sending the
   flow control itself (0x7E0): the car's own frames reach it, and its frames reach the car
   (up to three attempts: the car waits only N_Bs = 1 s for the flow control).
3. Sends N_SEND frames (id 0x321, data [i & 0xFF, 0x55]) for the test to count on the bus.
Prints `KEY value` lines and a JSON summary; exits non-zero on any failure.
"""
import json
import sys
import time

import can


def recv_until(bus, pred, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        msg = bus.recv(timeout=0.5)
        if msg is not None and pred(msg):
            return msg
    return None


def obd_vin(bus):
    """OBD-II 09 02 to the functional id; the engine's multi-frame answer reassembled from
    raw frames. Returns (vin, None) or (None, why)."""
    pad = [0x55] * 5
    bus.send(can.Message(arbitration_id=0x7DF, data=[0x02, 0x09, 0x02] + pad, is_extended_id=False))
    first = recv_until(bus, lambda m: m.arbitration_id == 0x7E8 and m.data[0] >> 4 == 1, 15)
    if first is None:
        return None, "no first frame from the engine (0x7E8) after 09 02"
    total = ((first.data[0] & 0x0F) << 8) | first.data[1]
    payload = bytearray(first.data[2:8])
    bus.send(can.Message(arbitration_id=0x7E0, data=[0x30, 0x00, 0x00] + pad, is_extended_id=False))
    sn = 1
    while len(payload) < total:
        cf = recv_until(bus, lambda m: m.arbitration_id == 0x7E8 and m.data[0] >> 4 == 2, 5)
        if cf is None:
            return None, f"consecutive frame {sn} missing ({len(payload)}/{total} bytes)"
        if cf.data[0] & 0x0F != sn & 0x0F:
            return None, f"consecutive frame {sn}: sequence number {cf.data[0] & 0x0F}"
        payload += cf.data[1:8]
        sn += 1
    payload = bytes(payload[:total])
    if payload[:3] != bytes([0x49, 0x02, 0x01]):
        return None, f"unexpected answer to 09 02: {payload.hex()}"
    return payload[3:].decode("ascii", "replace"), None


def main() -> int:
    host, port, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n_recv, n_send = int(sys.argv[4]), int(sys.argv[5])
    bus = can.Bus(interface="socketcand", host=host, port=port, channel=channel)
    errors = []

    # 1. Frames from the bus, in order.
    got = 0
    ready = False
    deadline = time.time() + 60
    while got < n_recv and time.time() < deadline:
        msg = bus.recv(timeout=1.0)
        if msg is None:
            continue
        if msg.arbitration_id == 0x0AA:
            if not ready:
                ready = True
                print("READY", flush=True)
            continue
        if not 0x100 <= msg.arbitration_id <= 0x1FF:
            continue
        want_id = 0x100 + (got % 0x100)
        want_data = bytes([got & 0xFF, 0xAA])
        if msg.arbitration_id != want_id or bytes(msg.data) != want_data:
            errors.append(f"frame {got}: got {msg.arbitration_id:X}#{bytes(msg.data).hex()}")
        got += 1
    print("RECEIVED", got, flush=True)

    # 2. OBD-II VIN from the simulated car, ISO-TP by hand over raw frames. The car waits
    # N_Bs (1 s) for our flow control: on a badly loaded machine an attempt may miss it, so
    # up to three attempts.
    vin, why = None, []
    for _ in range(3):
        vin, err = obd_vin(bus)
        if vin is not None:
            break
        why.append(err)
    if vin is None:
        errors.extend(why)
    print("OBD_VIN", vin, flush=True)
    print("OBD_ATTEMPTS", len(why) + (vin is not None), flush=True)

    # 3. Frames onto the car's bus.
    for i in range(n_send):
        bus.send(can.Message(arbitration_id=0x321, data=[i & 0xFF, 0x55], is_extended_id=False))
    # Let the last sends leave before closing.
    time.sleep(0.2)
    bus.shutdown()
    print(json.dumps({"received": got, "vin": vin, "errors": errors[:5]}), flush=True)
    return 0 if got == n_recv and vin is not None and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
