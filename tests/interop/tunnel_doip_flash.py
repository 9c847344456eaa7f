"""Independent DoIP tester for the tunnel end-to-end test (tests/tunnel_e2e.rs):
python-doipclient with udsoncan, connected to the operator endpoint's local DoIP entity,
identifies the vehicle, reads the VIN and flashes the simulated engine ECU through the tunnel
(programming session, security access, erase, RequestDownload, TransferData, exit).

usage: tunnel_doip_flash.py HOST PORT ECU_ADDRESS DOWNLOAD_BYTES
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


def key(level, seed, params):
    # The simulator's documented default algorithm (docs/simulator.md).
    s = int.from_bytes(seed, "big")
    r = (level % 29) + 3
    return ((((s << r) | (s >> (32 - r))) & 0xFFFFFFFF) ^ 0x4F424447).to_bytes(4, "big")


doip = DoIPClient(host, ecu, tcp_port=port, udp_port=port, protocol_version=2,
                  client_logical_address=0x0E00)
ident = doip.request_vehicle_identification()
print("ANNOUNCED_VIN", ident.vin, flush=True)

config = dict(configs.default_client_config)
config["data_identifiers"] = {0xF190: udsoncan.AsciiCodec(17)}
config["security_algo"] = key
config["p2_timeout"] = 2
config["p2_star_timeout"] = 10
with Client(DoIPClientUDSConnector(doip), config=config) as client:
    vin = client.read_data_by_identifier(0xF190).service_data.values[0xF190]
    print("UDS_VIN", vin, flush=True)
    client.change_session(3)
    client.change_session(2)
    client.unlock_security_access(1)
    r = client.start_routine(0xFF00)
    print("ERASE", r.positive, flush=True)
    loc = udsoncan.MemoryLocation(address=0x0000, memorysize=download, address_format=32,
                                  memorysize_format=32)
    r = client.request_download(loc)
    block = r.service_data.max_length - 2
    seq, sent, crc = 1, 0, 0
    while sent < download:
        n = min(block, download - sent)
        chunk = bytes(((sent + i) * 7 + 3) & 0xFF for i in range(n))
        client.transfer_data(seq & 0xFF, chunk)
        crc = zlib.crc32(chunk, crc)
        sent += n
        seq += 1
    r = client.request_transfer_exit()
    print("DOWNLOADED", sent, seq - 1, flush=True)
    print("SENT_CRC %08x" % crc, flush=True)
    print("ECU_CRC", r.data[-4:].hex(), flush=True)
doip.close()
print("DONE", flush=True)
