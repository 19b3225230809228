"""The startup log says who can join: only this computer (on loopback), or
pandas on the network with the command line to join with, one line per address
of this machine, found without sending a packet.

Listening on 0.0.0.0 sends nothing; every test connects to 127.0.0.1 alone.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import signal
import subprocess

import pytest
from test_server_process import START_S, STOP_S, ServerProcess, free_port, joined

from server3 import DEFAULT_PORT, local_addresses, who_can_join

LOCAL_ONLY = ("Only this computer can join (listening on {host}); "
              "--host 0.0.0.0 lets pandas on your network in.")
NETWORK = "Pandas on your network can join with: python3 client3.py --host {address}"


def ip_command_addresses() -> tuple[list[str], list[str]]:
    """What `ip` (iproute2) says this machine's addresses are: each interface's
    primary IPv4 address, and its global IPv6 ones; skips where there is no `ip`."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("no `ip` command to check the addresses against")
    shown = subprocess.run([ip, "-o", "addr", "show"], capture_output=True, text=True,
                           timeout=START_S, check=True).stdout
    ipv4, ipv6 = [], []
    for line in shown.splitlines():
        if match := re.search(r"\binet (\S+)/\d+ .*scope global", line):
            if "secondary" not in line:
                ipv4.append(match.group(1))
        elif match := re.search(r"\binet6 (\S+)/\d+ scope global", line):
            ipv6.append(match.group(1))
    return ipv4, ipv6


def test_local_addresses_are_this_machines_own_without_loopback_or_repeats() -> None:
    ipv4, ipv6 = ip_command_addresses()
    found = local_addresses()
    assert set(ipv4) | set(ipv6) <= set(found), (found, ipv4, ipv6)
    assert len(found) == len(set(found)), found
    ips = [ipaddress.ip_address(address.partition("%")[0]) for address in found]
    assert not [ip for ip in ips if ip.is_loopback or ip.is_unspecified], found
    assert [ip.version for ip in ips] == sorted(ip.version for ip in ips), "IPv4 first"
    if any(not ip.is_link_local for ip in ips):
        assert not [ip for ip in ips if ip.version == 6 and ip.is_link_local], found
    assert local_addresses(4) == [a for a, ip in zip(found, ips, strict=True) if ip.version == 4]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "127.0.0.2"])
def test_on_loopback_only_this_computer_can_join(host: str) -> None:
    assert who_can_join(host, DEFAULT_PORT, tls=False) == [LOCAL_ONLY.format(host=host)]


def test_on_one_address_that_address_is_given_with_the_port_and_tls() -> None:
    assert who_can_join("192.0.2.7", DEFAULT_PORT, tls=False) == [
        NETWORK.format(address="192.0.2.7")]
    assert who_can_join("2001:db8::7", 4000, tls=True) == [
        NETWORK.format(address="2001:db8::7") + " --port 4000 --tls"]


def test_on_all_addresses_each_address_of_that_family_is_given() -> None:
    for wildcard, version in (("0.0.0.0", 4), ("::", 6)):
        addresses = local_addresses(version)
        expected = ([NETWORK.format(address=a) for a in addresses] if addresses else
                    ["No network address found on this computer: only this computer can join "
                     "for now."])
        assert who_can_join(wildcard, DEFAULT_PORT, tls=False) == expected


def test_the_server_logs_that_only_this_computer_can_join_by_default() -> None:
    port = free_port()
    server = ServerProcess("--port", str(port))
    try:
        server.wait_for_stderr(rf"listening on .*\b{port}\b")
        line = server.wait_for_stderr(r"can join")
        assert line.endswith(" INFO " + LOCAL_ONLY.format(host="127.0.0.1")), line
    finally:
        server.kill()


def test_the_server_on_all_addresses_logs_one_line_per_address() -> None:
    addresses = local_addresses(4)
    if not addresses:
        pytest.skip("this machine has no IPv4 address but loopback")
    port = free_port("0.0.0.0")
    server = ServerProcess("--host", "0.0.0.0", "--port", str(port))
    try:
        server.wait_for_stderr(rf"listening on 0\.0\.0\.0:{port}\b")
        joined(("127.0.0.1", port), "Alice")  # serving; and every startup line came before
        server.proc.send_signal(signal.SIGINT)
        assert server.wait(STOP_S + 1) == 0
    finally:
        server.kill()
    said = [line.partition(" INFO ")[2] for line in server.stderr if "can join" in line]
    assert said == [NETWORK.format(address=address) + f" --port {port}"
                    for address in addresses], server.stderr
