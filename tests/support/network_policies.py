"""What a namespace's NetworkPolicies let through, evaluated offline as the API's semantics say.

A pod is its labels (a dict); a pod of another namespace also carries that namespace's labels under
NAMESPACE; an address outside the namespace is an ipaddress object. `allowed` says whether a pod may
open a connection to another pod or an address on a port: the source's egress and the destination's
ingress must both allow it (a pod no policy of a direction selects is open in that direction).
"""

from __future__ import annotations

import ipaddress

# Addresses outside the namespace: a public S3 endpoint (v4 and v6), and what must stay out of reach.
PUBLIC = (ipaddress.ip_address("52.216.8.1"), ipaddress.ip_address("2600:1fa0:4000::1"))
PRIVATE = tuple(ipaddress.ip_address(a) for a in (
    "10.0.0.1", "10.96.0.1", "172.16.0.10", "172.31.255.1", "192.168.1.1", "100.64.0.1", "100.127.255.1",
    "169.254.169.254", "127.0.0.1", "fd00:ec2::254", "fd20:ce::254", "fe80::1", "::1", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254"))


def selects(selector: dict, labels: dict) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def is_address(peer) -> bool:
    return isinstance(peer, (ipaddress.IPv4Address, ipaddress.IPv6Address))


def in_block(block: dict, address) -> bool:
    def contains(cidr: str) -> bool:
        network = ipaddress.ip_network(cidr)
        return network.version == address.version and address in network

    return contains(block["cidr"]) and not any(contains(cidr) for cidr in block.get("except", []))


# In a pod's labels: the labels of its namespace, when it is not the namespace rewind.
NAMESPACE = "(namespace)"
PROMETHEUS = {NAMESPACE: {"kubernetes.io/metadata.name": "monitoring"}, "app.kubernetes.io/name": "prometheus"}


def peer_matches(peer: dict, other) -> bool:
    """Whether a NetworkPolicy peer matches `other`: a pod's labels (with NAMESPACE for a pod of another
    namespace), or an address outside the namespace."""
    if "ipBlock" in peer:
        return is_address(other) and in_block(peer["ipBlock"], other)
    if is_address(other):
        return False
    namespace = other.get(NAMESPACE)
    if "namespaceSelector" in peer:
        return namespace is not None and selects(peer["namespaceSelector"], namespace) \
            and selects(peer.get("podSelector", {}), other)
    return namespace is None and selects(peer["podSelector"], other)


def direction_allows(docs, pod: dict, peer: dict, port: int, direction: str) -> bool:
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    policies = [p for p in docs if p["kind"] == "NetworkPolicy" and direction in p["spec"]["policyTypes"]
                and selects(p["spec"]["podSelector"], pod)]
    if not policies:
        return True  # no policy isolates this pod in this direction
    for policy in policies:
        for rule in policy["spec"].get(key, []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            if any(peer_matches(p, peer) for p in rule.get(peers_key, [])):
                return True
    return False


def allowed(docs, src: dict, dst, port: int) -> bool:
    """Whether the namespace's NetworkPolicies let pod `src` open a connection to `dst` (a pod's labels,
    or an address outside the namespace) on `port`."""
    if is_address(dst):
        return direction_allows(docs, src, dst, port, "Egress")
    return direction_allows(docs, src, dst, port, "Egress") and direction_allows(docs, dst, src, port, "Ingress")
