"""Independent DoIP tester against the `obdgw sim vehicle` binary (tests/sim_vehicle_python.rs):
python-doipclient with udsoncan reads the VIN (identification response and UDS 0xF190),
reads DTCs, and flashes DOWNLOAD_BYTES to the engine with the documented flow
(extended -> programming session, security access, erase routine 0xFF00, RequestDownload,
TransferData, RequestTransferExit, check routine 0x0202).

Also run against `obdgw operator`'s local DoIP entity, which presents the simulated car
through the tunnel (tests/tunnel_processes.rs).

usage: doip_sim_vehicle.py HOST PORT ECU_ADDRESS DOWNLOAD_BYTES
Prints one `KEY value` line per result; exits non-zero on any failure.
"""
import sys
import zlib

import udsoncan
from doipclient import DoIPClient
from doipclient.connectors import DoIPClientUDSConnector
from udsoncan import configs
from udsoncan.client import Client

host, port = sys.argv[1], int(sys.argv[2])
ecu, download = int(sys.argv[3], 0), int(sys.argv[4])


def key(level, seed):
    """The simulator's documented seed/key algorithm (docs/simulator.md)."""
    level = level if level % 2 else level - 1  # computed with the requestSeed level
    s = int.from_bytes(seed, "big")
    r = (level % 29) + 3
    return ((((s << r) | (s >> (32 - r))) & 0xFFFFFFFF) ^ 0x4F424447).to_bytes(4, "big")


doip = DoIPClient(host, ecu, tcp_port=port, udp_port=port, protocol_version=2,
                  client_logical_address=0x0E00)
ident = doip.request_vehicle_identification()
print("ANNOUNCED_VIN", ident.vin, flush=True)
print("ANNOUNCED_ADDRESS", hex(ident.logical_address), flush=True)

config = dict(configs.default_client_config)
config["data_identifiers"] = {0xF190: udsoncan.AsciiCodec(17)}
config["p2_timeout"] = 2
config["p2_star_timeout"] = 6
config["security_algo"] = lambda level, seed, params=None: key(level, seed)
with Client(DoIPClientUDSConnector(doip), config=config) as client:
    vin = client.read_data_by_identifier(0xF190).service_data.values[0xF190]
    print("UDS_VIN", vin, flush=True)
    dtcs = client.get_dtc_by_status_mask(0xFF).service_data.dtcs
    print("DTCS", len(dtcs), " ".join("%06X:%02X" % (d.id, d.status.get_byte_as_int()) for d in dtcs), flush=True)
    client.change_session(3)
    client.change_session(2)
    client.unlock_security_access(1)
    print("UNLOCKED", flush=True)
    r = client.start_routine(0xFF00)
    print("ERASED", r.positive, flush=True)
    loc = udsoncan.MemoryLocation(address=0x0000, memorysize=download, address_format=32,
                                  memorysize_format=32)
    r = client.request_download(loc)
    block = r.service_data.max_length - 2
    print("MAX_BLOCK", block, flush=True)
    data = bytes((i * 7 + (i >> 12)) & 0xFF for i in range(download))
    seq, sent = 1, 0
    while sent < download:
        n = min(block, download - sent)
        client.transfer_data(seq & 0xFF, data[sent:sent + n])
        sent += n
        seq += 1
    r = client.request_transfer_exit()
    local = zlib.crc32(data) & 0xFFFFFFFF
    print("DOWNLOADED", sent, seq - 1, flush=True)
    print("EXIT_CRC", r.data.hex().upper(), flush=True)
    print("LOCAL_CRC", "%08X" % local, flush=True)
    r = client.start_routine(0x0202, data=local.to_bytes(4, "big"))
    print("CHECK", r.data.hex().upper(), flush=True)
    client.change_session(1)
doip.close()
print("DONE", flush=True)
