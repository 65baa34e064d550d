"""The client address policies see: parsed once per address, the same every time."""

from __future__ import annotations

import ipaddress

from edge.access import responses


def test_addresses_parse_alike_when_seen_again_and_the_table_stays_bounded() -> None:
    for _ in range(2):  # the second time from the table of addresses seen
        assert responses._client_address("192.0.2.7") == ipaddress.ip_address("192.0.2.7")
        assert responses._client_address("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
        assert responses._client_address("not an address") == ipaddress.IPv4Address(0)
    for n in range(responses._ADDRESSES.max_entries + 10):
        responses._client_address(f"10.0.{n // 256 % 256}.{n % 256}")
    assert len(responses._ADDRESSES) <= responses._ADDRESSES.max_entries
