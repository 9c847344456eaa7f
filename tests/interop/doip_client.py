"""Independent DoIP tester for the interop test (tests/doip_python.rs): python-doipclient
with udsoncan against an obdgw DoIP entity.

usage: doip_client.py HOST TCP_PORT UDP_PORT ECU_ADDRESS DOWNLOAD_BYTES
Prints one `KEY value` line per result; exits non-zero on any failure.
"""
import sys

import udsoncan
from doipclient import DoIPClient
from doipclient.connectors import DoIPClientUDSConnector
from udsoncan import configs
from udsoncan.client import Client

host, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ecu, download = int(sys.argv[4], 0), int(sys.argv[5])

doip = DoIPClient(
    host,
    ecu,
    tcp_port=tcp_port,
    udp_port=udp_port,
    protocol_version=2,
    client_logical_address=0x0E00,
)
ident = doip.request_vehicle_identification()
print("ANNOUNCED_VIN", ident.vin, flush=True)
print("ANNOUNCED_ADDRESS", hex(ident.logical_address), flush=True)
status = doip.request_entity_status()
print("STATUS", status.node_type, status.max_concurrent_sockets, status.currently_open_sockets, flush=True)
power = doip.request_diagnostic_power_mode()
print("POWER", int(power.diagnostic_power_mode), flush=True)
alive = doip.request_alive_check()
print("ALIVE", hex(alive.source_address), flush=True)

config = dict(configs.default_client_config)
config["data_identifiers"] = {0xF190: udsoncan.AsciiCodec(17)}
config["p2_timeout"] = 2
config["p2_star_timeout"] = 5
with Client(DoIPClientUDSConnector(doip), config=config) as client:
    vin = client.read_data_by_identifier(0xF190).service_data.values[0xF190]
    print("UDS_VIN", vin, flush=True)
    client.tester_present()
    dtcs = client.get_dtc_by_status_mask(0xFF).service_data.dtcs
    print("DTCS", " ".join("%06X:%02X" % (d.id, d.status.get_byte_as_int()) for d in dtcs), flush=True)
    r = client.start_routine(0xFF00)
    print("ROUTINE", r.positive, flush=True)
    loc = udsoncan.MemoryLocation(address=0x0000, memorysize=download, address_format=32, memorysize_format=32)
    r = client.request_download(loc)
    block = r.service_data.max_length - 2
    seq, sent = 1, 0
    while sent < download:
        n = min(block, download - sent)
        client.transfer_data(seq & 0xFF, bytes([seq & 0xFF]) * n)
        sent += n
        seq += 1
    client.request_transfer_exit()
    print("DOWNLOADED", sent, seq - 1, flush=True)
doip.close()
print("DONE", flush=True)
